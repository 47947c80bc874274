"""Which phase of a DICOM study is which of the model's sequences, from its headers.

Per phase: ignored or not (localisers, diffusion, subtractions, projections, in/opposed-phase and fat images,
parameter maps, MRCP, cine, non-MR objects; from ImageType and the series description/protocol); T2- or
T1-weighted (vendor sequence names -- HASTE, SSFSE, BLADE ... VIBE, LAVA, THRIVE ... -- else echo and
repetition time); before or after contrast (acquisition before ContrastBolusStartTime, ContrastBolusAgent,
the description's words in several languages, else the first phase of a dynamic series is the mask); for
T1 after contrast the time after the bolus (ContrastBolusStartTime, else the first post-contrast phase taken
as the 20 s phase) places it in a phase window, else the description's phase words
(:func:`..sequences.guess_sequence`).  Per key the best-supported candidate wins (time over words over
position; axial over other orientations; for T1 plain, the mask of the dynamic series); two equal candidates
or none raise a ValueError that lists the candidates.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..sequences import REFERENCE_KEY, SEQUENCE_KEYS, display_name, find_alias, guess_sequence

GADOXETATE = ("primovist", "eovist", "gadoxet", "gd eob", "eob")
IGNORED_WORDS = (
    ("localiser", ("localizer", "localiser", "loc", "scout", "survey", "3 plane", "3pl", "tripilot", "pilot",
                   "aahscout", "calibration", "asset cal", "coil sens", "sense ref", "ref scan")),
    ("diffusion", ("diff", "dwi", "adc", "trace", "ep2d", "ivim", "dwibs", "resolve", "b50", "b800", "b1000")),
    ("subtraction", ("sub", "subtraction")),
    ("projection", ("mip", "mpr", "reformat")),
    ("in/opposed phase or fat image", ("in phase", "inphase", "opp", "opposed", "out phase", "outphase",
                                       "fat only")),
    ("parameter map", ("map", "pdff", "r2", "t2 star", "t2star", "swi", "mre", "elasto")),
    ("MRCP", ("mrcp", "cholangio")),
    ("cine", ("cine",)),
)
IGNORED_IMAGE_TYPES = {"LOCALIZER": "localiser", "DIFFUSION": "diffusion", "ADC": "diffusion",
                       "TRACEW": "diffusion", "FA": "diffusion", "SUBTRACTION": "subtraction", "SUB": "subtraction",
                       "MIP": "projection", "PROJECTION IMAGE": "projection", "IN_PHASE": "in/opposed phase",
                       "OUT_PHASE": "in/opposed phase", "OPP_PHASE": "in/opposed phase", "FAT": "fat image",
                       "FF": "fat fraction", "T1 MAP": "parameter map", "T2 MAP": "parameter map"}
T2_WORDS = ("t2", "haste", "ssfse", "ss fse", "frfse", "fse", "tse", "blade", "propeller", "multivane", "mvxd")
T1_WORDS = ("t1", "vibe", "starvibe", "lava", "thrive", "quick3d", "tigre", "flash", "fl3d", "spgr", "fspgr",
            "efgre", "gre", "disco", "twist", "cdt", "dyn", "dynamic", "dynamisch", "dinamic", "dynamique",
            "dixon", "caipi")
PRE_WORDS = ("ohne km", "vor km", "sin contraste", "senza mdc", "sans injection", "mask", "basal")
POST_WORDS = ("post", "km", "mit km", "nach km", "kontrast", "contrast", "+c", "c+", "gd", "gado", "mdc",
              "primovist", "eovist")
# time after the contrast bolus (s) of each post-contrast phase: [low, high)
WINDOWS = (("T1_20s", 5.0, 45.0), ("T1_60s", 45.0, 100.0), ("T1_120s", 100.0, 360.0), ("T1_15min", 540.0, 2700.0))
ASSUMED_FIRST_POST = 20.0   # without a bolus time the first post-contrast phase is taken as the 20 s phase
SCORE_TIME, SCORE_WORDS, SCORE_POSITION, SCORE_OVERRIDE = 3, 2, 1, 9


@dataclass
class Proposal:
    """What one phase is taken for, and why."""

    phase: object                    # headers.Phase
    ignored: "str | None" = None
    weighting: "str | None" = None   # "T1" or "T2"
    contrast: "str | None" = None    # "pre" or "post"
    contrast_why: str = ""
    seconds: "float | None" = None   # after the contrast bolus
    time_source: "str | None" = None
    key: "str | None" = None
    score: int = 0
    reasons: list = field(default_factory=list)

    @property
    def why(self) -> str:
        return "; ".join(r for r in self.reasons if r)

    def brief(self) -> str:
        """``UID 'description' phase 2/4 t=21 s -> T1_20s`` for messages."""
        text = self.phase.label()
        if self.seconds is not None:
            text += f" t={self.seconds:.0f} s"
        return text + (f" -> {self.key}" if self.key else f" ({self.ignored or 'not identified'})")


def ignore_reason(series, phase) -> "str | None":
    """Why a phase is no candidate for any sequence (None when it is one)."""
    if series.modality != "MR":
        return f"modality {series.modality or 'unknown'}"
    if int(phase.get("NumberOfFrames") or 1) > 1:
        return "multi-frame (enhanced) MR, not supported"
    for item in phase.image_type:
        if item in IGNORED_IMAGE_TYPES:
            return IGNORED_IMAGE_TYPES[item]
    for reason, words in IGNORED_WORDS:
        if find_alias(phase.text, words):
            return reason
    if float(phase.get("DiffusionBValue") or 0) > 0:
        return "diffusion"
    if len(phase.files) < 3:
        return f"{len(phase.files)} slice(s)"
    return None


def weighting(phase) -> "tuple[str | None, str]":
    """("T2" or "T1" or None, why): the sequence name's words, else echo and repetition time."""
    text = phase.text
    guess = guess_sequence(text)
    t2 = find_alias(text, T2_WORDS) if guess in (None, "T2") else None
    t1 = find_alias(text, T1_WORDS) or (guess if guess not in (None, "T2") else None)
    if t2 and not t1:
        return "T2", f"T2-weighted ('{t2}')"
    if t1 and not t2:
        return "T1", f"T1-weighted ('{t1}')"
    te, tr = phase.get("EchoTime"), phase.get("RepetitionTime")
    te = float(te) if te not in (None, "") else None
    tr = float(tr) if tr not in (None, "") else None
    if te is not None and te >= 60:
        return "T2", f"T2-weighted (TE {te:g} ms)"
    if te is not None and te < 15 and (tr is None or tr < 1000):
        return "T1", f"T1-weighted (TE {te:g} ms" + (f", TR {tr:g} ms)" if tr is not None else ")")
    return None, "weighting not recognised"


def contrast_state(phase, bolus, dynamic_rank: "int | None") -> "tuple[str | None, str]":
    """("pre" or "post" or None, why) for one T1 phase; ``bolus``: the study's bolus start (or None);
    ``dynamic_rank``: the phase's place (0 first) in its dynamic series, None when it is in none."""
    acquired = phase.acquired
    if bolus is not None and acquired is not None:
        if acquired < bolus:
            return "pre", f"acquired {bolus - acquired:.0f} s before ContrastBolusStartTime"
        return "post", "acquired after ContrastBolusStartTime"
    agent = str(phase.get("ContrastBolusAgent") or "").strip()
    if agent:
        return "post", f"ContrastBolusAgent {agent}"
    text = phase.text
    word = find_alias(text, PRE_WORDS)
    if word or guess_sequence(text) == "T1_plain":
        return "pre", f"'{word or guess_sequence(text)}' in the description"
    word = find_alias(text, POST_WORDS)
    if word or guess_sequence(text) in SEQUENCE_KEYS[2:]:
        return "post", f"'{word or guess_sequence(text)}' in the description"
    if dynamic_rank is not None:
        if dynamic_rank == 0:
            return "pre", "first phase of a dynamic series"
        return "post", "later phase of a dynamic series"
    return None, "contrast not recognised"


def dynamic_ranks(proposals: list) -> dict:
    """id(phase) -> its place in a dynamic series: the phases of one multi-phase series, or of three or more
    single-phase series with the same protocol (a dynamic written as a series per phase), by acquisition time."""
    groups = {}
    for p in proposals:
        if p.weighting != "T1" or p.ignored is not None:
            continue
        ph = p.phase
        key = ("series", ph.series_uid) if ph.n_phases > 1 else \
            ("protocol", (ph.protocol or ph.description).strip().lower())
        groups.setdefault(key, []).append(ph)
    ranks = {}
    for phases in groups.values():
        if len(phases) >= 3:
            ordered = sorted(phases, key=lambda ph: (ph.acquired if ph.acquired is not None else 0.0, ph.number))
            ranks.update({id(ph): i for i, ph in enumerate(ordered)})
    return ranks


def window_key(seconds: float) -> "str | None":
    for key, low, high in WINDOWS:
        if low <= seconds < high:
            return key
    return None


def study_bolus(proposals: list) -> "float | None":
    """The study's ContrastBolusStartTime (the most common one among the phases), or None."""
    values = [p.phase.bolus() for p in proposals if p.ignored is None]
    values = [round(v, 1) for v in values if v is not None]
    if not values:
        return None
    uniq, counts = np.unique(values, return_counts=True)
    return float(uniq[int(np.argmax(counts))])


def assign_times(proposals: list, bolus: "float | None") -> None:
    """Time after contrast of every post-contrast T1 phase: from the bolus, else from the first post-contrast
    phase taken as the 20 s phase."""
    post = [p for p in proposals if p.weighting == "T1" and p.contrast == "post" and p.phase.acquired is not None]
    if bolus is not None:
        for p in post:
            p.seconds, p.time_source = p.phase.acquired - bolus, "ContrastBolusStartTime"
    elif post:
        first = min(p.phase.acquired for p in post)
        for p in post:
            p.seconds = ASSUMED_FIRST_POST + p.phase.acquired - first
            p.time_source = f"first post-contrast phase taken as {ASSUMED_FIRST_POST:.0f} s (no ContrastBolusStartTime)"


def assign_key(p: Proposal) -> None:
    """The sequence key a classified phase stands for, its score and the reason."""
    words = guess_sequence(p.phase.text)
    if p.weighting == "T2":
        p.key, p.score = "T2", SCORE_WORDS
        return
    if p.weighting != "T1" or p.contrast is None:
        return
    if p.contrast == "pre":
        p.key = "T1_plain"
        p.score = SCORE_POSITION if "dynamic series" in p.contrast_why else SCORE_WORDS
        return
    by_time = window_key(p.seconds) if p.seconds is not None else None
    measured = p.time_source == "ContrastBolusStartTime"
    if by_time and (measured or words not in SEQUENCE_KEYS[2:]):
        p.key, p.score = by_time, SCORE_TIME if measured else SCORE_WORDS
        why = f"{p.seconds:.0f} s after contrast ({p.time_source}): the {display_name(by_time)} window"
        if words in SEQUENCE_KEYS[2:] and words != by_time:
            why += f" (the description suggests {display_name(words)})"
        p.reasons.append(why)
    elif words in SEQUENCE_KEYS[2:]:
        p.key, p.score = words, SCORE_WORDS
        p.reasons.append(f"the description names {display_name(words)}")
    elif p.seconds is not None:
        p.reasons.append(f"{p.seconds:.0f} s after contrast matches no phase window")


def classify(series_list: list) -> list:
    """A :class:`Proposal` for every phase of every series."""
    proposals = []
    for series in series_list:
        for phase in series.phases:
            p = Proposal(phase, ignore_reason(series, phase))
            if p.ignored is None:
                p.weighting, why = weighting(phase)
                if p.weighting is None:
                    p.ignored = why
                p.reasons.append(why)
            proposals.append(p)
        if not series.phases:
            proposals.append(Proposal(_bare_phase(series), f"{series.modality or 'no'} object, no image volume"))
    bolus = study_bolus(proposals)
    ranks = dynamic_ranks(proposals)
    for p in proposals:
        if p.weighting == "T1" and p.ignored is None:
            p.contrast, p.contrast_why = contrast_state(p.phase, bolus, ranks.get(id(p.phase)))
            p.reasons.append(p.contrast_why)
    assign_times(proposals, bolus)
    for p in proposals:
        if p.ignored is None:
            assign_key(p)
    return proposals


def _bare_phase(series):
    from .headers import Phase

    return Phase(series.uid, 1, 1, series.files, series.headers)


def is_axial(phase) -> bool:
    return abs(float(phase.normal()[2])) > 0.8


def _volumes(proposals: list) -> list:
    return [p for p in proposals if p.phase.first.get("ImagePositionPatient") is not None]


def apply_overrides(proposals: list, overrides: "dict | None", keys, where: str) -> dict:
    """Sequence key -> the phase the user named (``SERIES_UID`` or ``SERIES_UID:PHASE``), even an ignored one."""
    chosen = {}
    for key, ref in (overrides or {}).items():
        if key not in keys:
            raise ValueError(f"{where}: override {key}={ref}: unknown sequence; the model's sequences are "
                             f"{', '.join(keys)}")
        uid, _, number = str(ref).strip().partition(":")
        phases = [p for p in _volumes(proposals) if p.phase.series_uid == uid]
        if number:
            phases = [p for p in phases if str(p.phase.number) == number.strip()]
        if not phases:
            raise ValueError(f"{where}: override {key}={ref}: no image series (phase) with that UID in the study; "
                             f"candidates: {candidates_text(proposals)}")
        if len(phases) > 1:
            numbers = ", ".join(str(p.phase.number) for p in phases)
            raise ValueError(f"{where}: override {key}={ref}: the series has {len(phases)} phases ({numbers}); "
                             f"name one as {uid}:PHASE")
        p = phases[0]
        chosen[key] = Proposal(p.phase, None, p.weighting, p.contrast, p.contrast_why, p.seconds, p.time_source,
                               key, SCORE_OVERRIDE, [f"override {key}={ref}"] + [r for r in p.reasons if r])
    return chosen


def narrow(key: str, candidates: list, proposals: list) -> list:
    """The best-supported candidates for ``key``: highest score, then axial, then (T1 plain) the dynamic
    series' own pre-contrast phase.  The winner's reasons say what decided."""
    if not candidates:
        return []
    top = max(p.score for p in candidates)
    best = [p for p in candidates if p.score == top]
    n = len(candidates)
    if len(best) > 1 and any(is_axial(p.phase) for p in best):
        best = [p for p in best if is_axial(p.phase)]
        if len(best) == 1:
            best[0].reasons.append("axial, preferred over other orientations")
    if len(best) > 1 and key == "T1_plain":
        dynamic = [p for p in proposals if p.key in SEQUENCE_KEYS[2:5]]
        uids = {p.phase.series_uid for p in dynamic}
        protocols = {p.phase.protocol.lower() for p in dynamic if p.phase.protocol}
        same = [p for p in best if p.phase.series_uid in uids or p.phase.protocol.lower() in protocols]
        if len(same) == 1:
            same[0].reasons.append("the pre-contrast phase of the dynamic series")
        best = same or best
    if len(best) == 1 and n > 1:
        best[0].reasons.append(f"chosen over {n - 1} other candidate(s)")
    return best


def candidates_text(proposals: list) -> str:
    """Every candidate phase and every ignored series, in one line."""
    cands = [p.brief() for p in proposals if p.ignored is None]
    ignored, seen = [], set()
    for p in proposals:
        if p.ignored and p.phase.series_uid not in seen:
            seen.add(p.phase.series_uid)
            ignored.append(f"'{p.phase.description or p.phase.series_uid}' ({p.ignored})")
    text = " | ".join(cands) or "none"
    return text + (f"; ignored: {', '.join(ignored)}" if ignored else "")


def choose(proposals: list, keys, overrides: "dict | None", where: str) -> dict:
    """Sequence key -> :class:`Proposal` for each of ``keys``; ValueError (one line) when a key has no
    candidate or several equal ones, listing the candidates and how to choose."""
    keys = tuple(keys)
    chosen = apply_overrides(proposals, overrides, keys, where)
    used = {id(p.phase) for p in chosen.values()}
    missing, ambiguous = [], {}
    for key in keys:
        if key in chosen:
            continue
        best = narrow(key, [p for p in proposals if p.key == key and p.ignored is None and id(p.phase) not in used],
                      proposals)
        if len(best) == 1:
            chosen[key] = best[0]
            used.add(id(best[0].phase))
        elif best:
            ambiguous[key] = best
        else:
            missing.append(key)
    if missing or ambiguous:
        parts = [f"missing {', '.join(missing)}"] if missing else []
        parts += [f"{len(c)} equal candidates for {k} ({', '.join(p.phase.ref for p in c)})"
                  for k, c in ambiguous.items()]
        raise ValueError(f"{where}: cannot identify the model's sequences: {'; '.join(parts)}. Candidates: "
                         f"{candidates_text(proposals)}. Choose with KEY=SERIES_UID[:PHASE] "
                         f"(overrides / --sequence)".replace("\n", " "))
    return {k: chosen[k] for k in keys}


def record(key: str, p: Proposal) -> dict:
    """One line of ``sequences.json``: key, series UID (and phase), description, time after contrast, why;
    ``files``: the phase's files in slice order."""
    phase = p.phase
    agent = str(phase.get("ContrastBolusAgent") or "").strip()
    why = p.why
    if agent and not find_alias(agent, GADOXETATE):
        why += f"; warning: contrast agent {agent} is not gadoxetate, which the model expects"
    try:
        number = int(phase.get("SeriesNumber"))
    except (TypeError, ValueError):
        number = None
    return {"key": key, "series_uid": phase.series_uid, "series_number": number,
            "phase": phase.number if phase.n_phases > 1 else None, "phases": phase.n_phases,
            "description": phase.description, "protocol": phase.protocol,
            "time_after_contrast_s": None if p.seconds is None else round(float(p.seconds), 1),
            "time_source": p.time_source, "contrast_agent": agent or None, "why": why,
            "reference": key == REFERENCE_KEY, "files": list(phase.files)}
