"""Development tools: the tiny random InternVL checkpoint for the offline demo and the tests."""
