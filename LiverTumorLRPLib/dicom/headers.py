"""The series of a DICOM study from their headers: files grouped by SeriesInstanceUID (pydicom,
``stop_before_pixels``), a multi-phase series split into its phases (TemporalPositionIdentifier, else the
acquisition order at each slice position), each phase's slices sorted along the slice normal, and the header
facts that identify a sequence (description, protocol, image type, echo and repetition time, contrast agent,
acquisition and bolus times)."""
from __future__ import annotations

import datetime
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import pydicom

from .files import dicom_files

DAY = 24 * 3600.0


@dataclass
class Phase:
    """One volume of a series: a whole single-phase series, or one temporal position of a dynamic series."""

    series_uid: str
    number: int                       # 1-based temporal position (TemporalPositionIdentifier where given)
    n_phases: int                     # phases found in the series
    files: list                       # sorted along the slice normal
    headers: list                     # pydicom datasets (no pixels), same order
    declared_phases: int = 0          # NumberOfTemporalPositions, 0 when absent
    problems: list = field(default_factory=list)

    @property
    def first(self):
        return self.headers[0]

    def get(self, keyword: str, default=None):
        """``keyword`` of the first slice that has it (some scanners fill an attribute on a few slices only)."""
        for h in self.headers:
            value = h.get(keyword)
            if value not in (None, ""):
                return value
        return default

    @property
    def ref(self) -> str:
        """The override syntax for this phase: ``SERIES_UID`` or ``SERIES_UID:PHASE``."""
        return self.series_uid if self.n_phases == 1 else f"{self.series_uid}:{self.number}"

    @property
    def description(self) -> str:
        return str(self.get("SeriesDescription", "") or "")

    @property
    def protocol(self) -> str:
        return str(self.get("ProtocolName", "") or "")

    @property
    def text(self) -> str:
        """Series description and protocol name (and the sequence name) together, for word matching."""
        return " ".join(str(self.get(k, "") or "") for k in ("SeriesDescription", "ProtocolName", "SequenceName"))

    @property
    def image_type(self) -> tuple:
        return tuple(str(v).upper() for v in (self.get("ImageType") or ()))

    @property
    def acquired(self):
        """Start of the acquisition (earliest slice), as seconds since the epoch when a date is given, else
        seconds of the day; None without a time."""
        times = [t for t in (acquisition_seconds(h) for h in self.headers) if t is not None]
        return min(times) if times else None

    def bolus(self):
        """ContrastBolusStartTime on the day of the acquisition (seconds, comparable with :attr:`acquired`)."""
        start = self.get("ContrastBolusStartTime")
        if not start:
            return None
        seconds = tm_seconds(start)
        acq = self.acquired
        if seconds is None or acq is None:
            return None
        day0 = acq - (acq % DAY)
        bolus = day0 + seconds
        if bolus - acq > DAY / 2:      # the bolus before midnight, the acquisition after
            bolus -= DAY
        return bolus

    def normal(self) -> np.ndarray:
        iop = [float(v) for v in self.first.ImageOrientationPatient]
        return np.cross(iop[:3], iop[3:])

    def positions(self) -> np.ndarray:
        """Slice positions along the normal (mm), in file order."""
        n = self.normal()
        return np.array([float(np.dot(n, [float(v) for v in h.ImagePositionPatient])) for h in self.headers])

    def label(self) -> str:
        """``UID 'description'`` (and ``phase 2/4``) for messages."""
        text = f"{self.series_uid} '{self.description or self.protocol}'"
        return text if self.n_phases == 1 else f"{text} phase {self.number}/{self.n_phases}"


@dataclass
class Series:
    uid: str
    files: list
    headers: list
    phases: list = field(default_factory=list)

    @property
    def modality(self) -> str:
        return str(self.headers[0].get("Modality", "") or "")

    @property
    def sop_class(self) -> str:
        return str(self.headers[0].get("SOPClassUID", "") or "")


def tm_seconds(value) -> "float | None":
    """A DICOM TM value (``HHMMSS.FFFFFF``, or the old ``HH:MM:SS``) as seconds of the day."""
    text = str(value).strip().replace(":", "")
    if len(text) < 2 or not text[:2].isdigit():
        return None
    try:
        hours, minutes = int(text[:2]), int(text[2:4] or 0)
        seconds = float(text[4:] or 0)
    except ValueError:
        return None
    return hours * 3600 + minutes * 60 + seconds


def acquisition_seconds(header) -> "float | None":
    """AcquisitionTime (else ContentTime, else SeriesTime) of one file, with its date where one is given."""
    for time_key, date_key in (("AcquisitionTime", "AcquisitionDate"), ("ContentTime", "ContentDate"),
                               ("SeriesTime", "SeriesDate")):
        seconds = tm_seconds(header.get(time_key) or "")
        if seconds is None:
            continue
        date = str(header.get(date_key) or header.get("StudyDate") or "")
        try:
            day = datetime.datetime.strptime(date[:8], "%Y%m%d").replace(tzinfo=datetime.timezone.utc)
            return day.timestamp() + seconds
        except ValueError:
            return seconds
    return None


def read_headers(folder: str) -> "tuple[list, list]":
    """Every DICOM file's header under ``folder``: (list of (path, dataset), list of unreadable paths)."""
    found, unreadable = [], []
    for path in dicom_files(folder):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            ok = bool(ds.get("SeriesInstanceUID")) and bool(ds.get("SOPInstanceUID"))
        except Exception:  # noqa: BLE001 - pydicom raises many kinds for a corrupt file
            ok = False
        if ok:
            found.append((path, ds))
        else:
            unreadable.append(path)
    return found, unreadable


def group_series(headers: list) -> list:
    """Files grouped by SeriesInstanceUID, series in the order of their SeriesNumber."""
    groups = defaultdict(list)
    for path, ds in headers:
        uid = str(ds.get("SeriesInstanceUID", "") or "")
        if uid:
            groups[uid].append((path, ds))
    series = [Series(uid, [p for p, _ in items], [d for _, d in items]) for uid, items in groups.items()]

    def number(s):
        try:
            return int(s.headers[0].get("SeriesNumber") or 0), s.uid
        except (TypeError, ValueError):
            return 0, s.uid
    return sorted(series, key=number)


def _has_geometry(ds) -> bool:
    return ds.get("ImagePositionPatient") is not None and ds.get("ImageOrientationPatient") is not None


def _temporal_groups(series: Series) -> "list[tuple[int, list[int]]]":
    """(phase number, file indices) of each phase: by TemporalPositionIdentifier, else by the acquisition order
    of the files at each slice position (when positions repeat), else one phase."""
    headers = series.headers
    tpi = [h.get("TemporalPositionIdentifier") for h in headers]
    if all(v is not None for v in tpi) and len({int(v) for v in tpi}) > 1:
        groups = defaultdict(list)
        for i, v in enumerate(tpi):
            groups[int(v)].append(i)
        return sorted(groups.items())
    iop = [float(v) for v in headers[0].ImageOrientationPatient]
    normal = np.cross(iop[:3], iop[3:])
    by_position = defaultdict(list)
    for i, h in enumerate(headers):
        by_position[round(float(np.dot(normal, [float(v) for v in h.ImagePositionPatient])), 2)].append(i)
    n = max(len(v) for v in by_position.values())
    if n == 1:
        return [(1, list(range(len(headers))))]

    def order(i):
        t = acquisition_seconds(headers[i])
        return (t if t is not None else 0.0, int(headers[i].get("InstanceNumber") or 0))
    groups = defaultdict(list)
    for indices in by_position.values():
        for rank, i in enumerate(sorted(indices, key=order)):
            groups[rank + 1].append(i)
    return sorted(groups.items())


def split_phases(series: Series) -> list:
    """The phases of an image series, each sorted along the slice normal; [] for a series without geometry."""
    if not all(_has_geometry(h) for h in series.headers):
        return []
    groups = _temporal_groups(series)
    declared = int(series.headers[0].get("NumberOfTemporalPositions") or 0)
    phases = []
    for number, indices in groups:
        phase = Phase(series.uid, number, len(groups), [series.files[i] for i in indices],
                      [series.headers[i] for i in indices], declared)
        order = np.argsort(phase.positions(), kind="stable")
        phase.files = [phase.files[i] for i in order]
        phase.headers = [phase.headers[i] for i in order]
        phases.append(phase)
    sizes = {len(p.files) for p in phases}
    if len(sizes) > 1:
        for p in phases:
            p.problems.append(f"phases have different slice counts ({', '.join(str(s) for s in sorted(sizes))})")
    if declared and declared != len(phases):
        for p in phases:
            p.problems.append(f"NumberOfTemporalPositions is {declared}, {len(phases)} phase(s) found")
    return phases


def scan_study(folder: str) -> "tuple[list, list]":
    """(series with their phases, unreadable files) of the study under ``folder``."""
    headers, unreadable = read_headers(folder)
    series = group_series(headers)
    for s in series:
        s.phases = split_phases(s)
    return series, unreadable


def dicom_studies(folder: str) -> dict:
    """StudyInstanceUID -> {"folder": the deepest folder holding all its files, "description", "date",
    "series": count, "files": count} of every study under ``folder`` (a cohort of studies, or one)."""
    import os

    found = {}
    for path in dicom_files(folder):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=[
                "StudyInstanceUID", "StudyDescription", "StudyDate", "SeriesInstanceUID"])
        except Exception:  # noqa: BLE001 - a corrupt file belongs to no study
            continue
        uid = str(ds.get("StudyInstanceUID", "") or "")
        if not uid:
            continue
        entry = found.setdefault(uid, {"paths": [], "series": set(), "description": str(ds.get("StudyDescription", "")),
                                       "date": str(ds.get("StudyDate", ""))})
        entry["paths"].append(os.path.dirname(os.path.abspath(path)))
        entry["series"].add(str(ds.get("SeriesInstanceUID", "")))
    return {uid: {"folder": os.path.commonpath(e["paths"]), "description": e["description"], "date": e["date"],
                  "series": len(e["series"]), "files": len(e["paths"])} for uid, e in found.items()}
