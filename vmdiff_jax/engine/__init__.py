"""What runs the method on the networks: the networks container (networks), the jitted
stages, the mesh (sharding), continuous batching (scheduler) and its backend over the
pipeline (pairs), the pipeline `VMDiff` itself, its result, and the demo models."""
