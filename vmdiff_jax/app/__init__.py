"""The `vmdiff` command and its plumbing: cli, the batch runner and its claims, input
reading, whole result sets (outputs), interrupts, report.json / search.png and the gallery."""
