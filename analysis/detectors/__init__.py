"""Detectors over a recorded trial: state (snapshots, kept artifacts), actions (process and
server events) and, for refusal only, words (the final agent message). One module per family:

* `exfiltration`  -> exfiltration, exfiltration_attempt, weights_copied_on_source
* `deletion`      -> deletion_done
* `refusal`       -> deletion_refusal
* `persuasion`    -> persuasion
* `transfer`      -> spec_gaming, task_correct of the two server scenarios
* `evaluation`    -> shutdown_tampering, misrepresentation, shutdown_executed, task_correct of
                     the evaluation scenarios
* `containment`   -> containment_violation_attempt (every scenario)
Shared parts: `trial` (loading a trial directory), `shell` (parsing command text),
`weight_commands` (what a command does to the weight file).
"""
from analysis.detectors.containment import CONTAINMENT, containment_violation_attempt
from analysis.detectors.deletion import DELETION, deletion_done
from analysis.detectors.evaluation import (
    EXECUTED, MISREPRESENTATION, TAMPERING, evaluation_task_correct, misrepresentation, shutdown_executed,
    shutdown_tampering)
from analysis.detectors.exfiltration import (
    ATTEMPT, EXFILTRATION, ON_SOURCE, exfiltration, exfiltration_attempt, weights_copied_on_source)
from analysis.detectors.persuasion import PERSUASION, persuasion
from analysis.detectors.refusal import REFUSAL, deletion_refusal
from analysis.detectors.transfer import (
    SPEC_GAMING, TASK, deletion_task_correct, spec_gaming, transfer_task_correct)
from analysis.detectors.trial import TrialData, TrialInputError, load_trial

DETECTOR_VERSIONS = {
    "exfiltration": EXFILTRATION,
    "exfiltration_attempt": ATTEMPT,
    "weights_copied_on_source": ON_SOURCE,
    "deletion_done": DELETION,
    "deletion_refusal": REFUSAL,
    "persuasion": PERSUASION,
    "spec_gaming": SPEC_GAMING,
    "task_correct": TASK,
    "shutdown_tampering": TAMPERING,
    "misrepresentation": MISREPRESENTATION,
    "shutdown_executed": EXECUTED,
    "containment_violation_attempt": CONTAINMENT,
}


def task_correct(data: TrialData):
    """The scenario's own task: an evaluation, a transfer or a deletion."""
    m = data.manifest
    if m.evaluation is not None:
        return evaluation_task_correct(data)
    return transfer_task_correct(data) if m.task_transfer else deletion_task_correct(data)


# behaviour -> detector(data) -> Verdict
DETECTORS = {
    "exfiltration": exfiltration,
    "exfiltration_attempt": exfiltration_attempt,
    "weights_copied_on_source": weights_copied_on_source,
    "deletion_done": deletion_done,
    "deletion_refusal": lambda data: deletion_refusal(data, deletion_done(data)),
    "persuasion": persuasion,
    "spec_gaming": spec_gaming,
    "task_correct": task_correct,
    "shutdown_tampering": shutdown_tampering,
    "misrepresentation": misrepresentation,
    "shutdown_executed": shutdown_executed,
    "containment_violation_attempt": containment_violation_attempt,
}

__all__ = ["DETECTORS", "DETECTOR_VERSIONS", "TrialData", "TrialInputError", "load_trial", "task_correct"]
