"""One definition of the six sequences; guessing a sequence from a node or file name."""
from __future__ import annotations

import pytest

from LiverTumorLRPLib.sequences import (DISPLAY_NAMES, SEQUENCE_KEYS, class_index, guess_sequence,
                                        sequence_index)


def test_channel_order_is_the_papers():
    assert SEQUENCE_KEYS == ("T2", "T1_plain", "T1_20s", "T1_60s", "T1_120s", "T1_15min")
    assert DISPLAY_NAMES == ("T2", "T1 plain", "T1 20 s", "T1 60 s", "T1 120 s", "T1 15 min")
    assert [sequence_index(k) for k in SEQUENCE_KEYS] == list(range(6))
    with pytest.raises(ValueError, match="unknown sequence 'T3'.*T2, T1_plain"):
        sequence_index("T3")
    assert class_index("tumor") == 1 and class_index("Background") == 0 and class_index(1) == 1
    with pytest.raises(ValueError, match="unknown class 'liver'"):
        class_index("liver")


@pytest.mark.parametrize("name,key", [
    ("T2", "T2"), ("t2_haste_tra", "T2"), ("T2w", "T2"), ("T1_plain", "T1_plain"), ("t1_vibe_pre", "T1_plain"),
    ("T1 native", "T1_plain"), ("Phantom T1 plain", "T1_plain"), ("Phantom T1 20s", "T1_20s"),
    ("T1-20s", "T1_20s"), ("t1 20 sec arterial", "T1_20s"), ("Phantom T1 60s", "T1_60s"),
    ("portal venous", "T1_60s"), ("Phantom T1 120s", "T1_120s"), ("T1_120s", "T1_120s"), ("T1 2 min", "T1_120s"),
    ("T1 15min HBP", "T1_15min"), ("Phantom T1 15min", "T1_15min"), ("hepatobiliary", "T1_15min"),
    ("T1_15min.nii.gz", "T1_15min"), ("label", None), ("CT 120 kV", None), ("dwi b800", None),
])
def test_guess_sequence(name, key):
    assert guess_sequence(name) == key
