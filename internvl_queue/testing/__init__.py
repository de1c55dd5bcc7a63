"""Development tools: the tiny random InternVL checkpoint for the offline demo and the tests, and
the reference answer (transformers' own ``generate``) the service is checked against."""
