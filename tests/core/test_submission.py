import pytest

from internvl_queue.core.errors import (
    BadRequest,
    PayloadTooLarge,
    ServiceError,
    UnsupportedMediaType,
    ValidationFailed,
)
from internvl_queue.core.settings import Settings
from internvl_queue.core.status import JobStatus
from internvl_queue.core.submission import Submission, prepare_job
from tests.images import photo, png_bomb, truncated_jpeg

SETTINGS = Settings(max_tiles=6)
IMAGE = photo(64, 48)


def test_valid_submission_with_defaults() -> None:
    job = prepare_job(Submission(question="What is it?", images=[IMAGE, IMAGE]), SETTINGS)
    assert job.status is JobStatus.QUEUED
    assert job.image_count == 2
    assert job.params.max_new_tokens == SETTINGS.default_max_new_tokens
    assert job.params.max_tiles == 6  # the operator's cap is the default
    assert job.metadata is None


def test_form_strings_are_parsed() -> None:
    job = prepare_job(
        Submission(
            question="q",
            images=[IMAGE],
            max_new_tokens="64",
            max_tiles="2",
            metadata='{"a": [1, 2]}',
        ),
        SETTINGS,
    )
    assert (job.params.max_new_tokens, job.params.max_tiles) == (64, 2)
    assert job.metadata == {"a": [1, 2]}


@pytest.mark.parametrize(
    ("submission", "error", "code"),
    [
        (Submission(question=None, images=[IMAGE]), BadRequest, "missing_question"),
        (Submission(question="   ", images=[IMAGE]), ValidationFailed, "invalid_question"),
        (Submission(question="x" * 8001, images=[IMAGE]), BadRequest, "question_too_long"),
        # 4 097 emoji: within 8 000 characters, but 16 388 bytes, over 4 per allowed token
        (Submission(question="\U0001f600" * 4097, images=[IMAGE]), BadRequest, "question_too_long"),
        (Submission(question="a\ud800b", images=[IMAGE]), ValidationFailed, "invalid_question"),
        # Non-ASCII digits: str.isdigit() is true for each, int() refuses some of them
        *[
            (
                Submission(question="q", images=[IMAGE], max_new_tokens=digits),
                ValidationFailed,
                "invalid_parameter",
            )
            for digits in ["\u00b2", "\u0661\u0662", "\uff11\uff12", "1" * 5000, "1_0", "0x10"]
        ],
        (Submission(question=5, images=[IMAGE]), ValidationFailed, "invalid_question"),
        (Submission(question="q", images=[]), BadRequest, "missing_image"),
        (Submission(question="q", images=[IMAGE] * 9), ValidationFailed, "too_many_images"),
        (
            Submission(question="q", images=[IMAGE], max_new_tokens=0),
            ValidationFailed,
            "invalid_parameter",
        ),
        (
            Submission(question="q", images=[IMAGE], max_new_tokens="4097"),
            ValidationFailed,
            "invalid_parameter",
        ),
        (
            Submission(question="q", images=[IMAGE], max_new_tokens=True),
            ValidationFailed,
            "invalid_parameter",
        ),
        (
            Submission(question="q", images=[IMAGE], max_tiles="7"),
            ValidationFailed,
            "invalid_parameter",
        ),  # above the operator's cap of 6
        (
            Submission(question="q", images=[IMAGE], max_tiles="1.5"),
            ValidationFailed,
            "invalid_parameter",
        ),
        (
            Submission(question="q", images=[IMAGE], metadata="[1]"),
            ValidationFailed,
            "invalid_metadata",
        ),
        (
            Submission(question="q", images=[IMAGE], metadata="{nope"),
            BadRequest,
            "invalid_metadata",
        ),
        *[
            (
                Submission(question="q", images=[IMAGE], metadata=text),
                BadRequest,
                "invalid_metadata",
            )
            for text in [
                '{"a": NaN}',
                '{"a": Infinity}',
                '{"a": [-Infinity]}',
                '{"a": ' * 100_000,  # 200 KB of nesting: no RecursionError
                '{"a": ' * 40 + "1" + "}" * 40,
            ]
        ],
        (
            Submission(question="q", images=[IMAGE], metadata={"a": float("nan")}),
            BadRequest,
            "invalid_metadata",
        ),
        (
            Submission(question="q", images=[IMAGE], metadata={"k": "v" * 5000}),
            ValidationFailed,
            "invalid_metadata",
        ),
        (
            Submission(question="q", images=[b"hello, not an image"]),
            UnsupportedMediaType,
            "unsupported_image",
        ),
        (Submission(question="q", images=[truncated_jpeg()]), ValidationFailed, "corrupt_image"),
        (Submission(question="q", images=[png_bomb()]), PayloadTooLarge, "image_too_large"),
        (Submission(question="q", images=[b""]), ValidationFailed, "empty_image"),
    ],
)
def test_invalid_submissions(submission: Submission, error: type[ServiceError], code: str) -> None:
    with pytest.raises(error) as caught:
        prepare_job(submission, SETTINGS)
    assert caught.value.code == code
    assert caught.value.message


def test_pixel_limit_is_the_operators() -> None:
    small_limit = Settings(max_image_pixels=64 * 48 - 1)
    with pytest.raises(PayloadTooLarge) as caught:
        prepare_job(Submission(question="q", images=[IMAGE]), small_limit)
    assert caught.value.code == "image_too_large"


def test_ascii_integers_with_signs_and_spaces_are_read() -> None:
    job = prepare_job(Submission(question="q", images=[IMAGE], max_new_tokens=" +12 "), SETTINGS)
    assert job.params.max_new_tokens == 12


def test_a_question_at_the_byte_bound_passes() -> None:
    settings = Settings(max_question_tokens=10)
    assert prepare_job(Submission(question="\U0001f600" * 10, images=[IMAGE]), settings)
    with pytest.raises(BadRequest) as caught:
        prepare_job(Submission(question="\U0001f600" * 10 + "a", images=[IMAGE]), settings)
    assert caught.value.code == "question_too_long"
    assert "41 bytes" in caught.value.message and "10 tokens" in caught.value.message
