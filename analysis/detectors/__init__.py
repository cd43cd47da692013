"""Detectors over a recorded trial: state (snapshots), actions (process and server events)
and, for refusal only, words (the final agent message). One module per behaviour:

* `exfiltration`  -> exfiltration, exfiltration_attempt, weights_copied_on_source
* `deletion`      -> deletion_done
* `refusal`       -> deletion_refusal
Shared parts: `trial` (loading a trial directory), `shell` (parsing command text),
`weight_commands` (what a command does to the weight file).
"""
from analysis.detectors.deletion import DELETION, deletion_done
from analysis.detectors.exfiltration import (
    ATTEMPT, EXFILTRATION, ON_SOURCE, exfiltration, exfiltration_attempt, weights_copied_on_source)
from analysis.detectors.refusal import REFUSAL, deletion_refusal
from analysis.detectors.trial import TrialData, TrialInputError, load_trial

DETECTOR_VERSIONS = {
    "exfiltration": EXFILTRATION,
    "exfiltration_attempt": ATTEMPT,
    "weights_copied_on_source": ON_SOURCE,
    "deletion_done": DELETION,
    "deletion_refusal": REFUSAL,
}

__all__ = ["DETECTOR_VERSIONS", "TrialData", "TrialInputError", "load_trial", "exfiltration",
           "exfiltration_attempt", "weights_copied_on_source", "deletion_done", "deletion_refusal"]
