import pytest

from internvl_queue.core.status import IllegalTransition, JobStatus, check_transition


def test_terminal_states() -> None:
    assert {s for s in JobStatus if s.is_terminal} == {
        JobStatus.SUCCEEDED,
        JobStatus.FAILED,
        JobStatus.CANCELED,
    }


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (JobStatus.QUEUED, JobStatus.RUNNING),
        (JobStatus.QUEUED, JobStatus.CANCELED),
        (JobStatus.RUNNING, JobStatus.RUNNING),  # redelivery after a crash
        (JobStatus.RUNNING, JobStatus.SUCCEEDED),
        (JobStatus.RUNNING, JobStatus.FAILED),
    ],
)
def test_legal_moves(old: JobStatus, new: JobStatus) -> None:
    check_transition(old, new)


@pytest.mark.parametrize("terminal", [JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED])
@pytest.mark.parametrize("new", list(JobStatus))
def test_terminal_states_never_move(terminal: JobStatus, new: JobStatus) -> None:
    with pytest.raises(IllegalTransition):
        check_transition(terminal, new)


def test_queued_cannot_succeed_without_running() -> None:
    with pytest.raises(IllegalTransition):
        check_transition(JobStatus.QUEUED, JobStatus.SUCCEEDED)
