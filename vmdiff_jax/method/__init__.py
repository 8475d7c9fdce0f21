"""The paper's method, without a model of its own: the schedule and Euler solver (sampling),
SCat and slerp (mixing), BNoise and MDeNoise (hsp), the score, the prompts, the scalar
searches (golden), the EAA search as a generator of requests (search) and the object
locators for the score's crops."""
