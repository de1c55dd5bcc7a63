"""The reference answer the tests compare the service with: ``internvl_queue.testing.reference``
(transformers' own processor + ``model.generate``, independent of ``internvl_queue.worker``)."""

from internvl_queue.testing.reference import reference_answer, reference_tokens

__all__ = ["reference_answer", "reference_tokens"]
