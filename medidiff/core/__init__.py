"""Core: the diffusion maths and the engine, with no knowledge of files beyond model folders.

schedule (noise schedules), model (network + schedule + normaliser, save/load), sampling
(samplers as generators, sliding-window network calls), data (scan folders -> training
batches), intensity (normalisers), noise (noise models), metrics, lesions and simplex noise,
devices and the ``Progress`` record. Import the modules directly; this package imports nothing
eagerly so that importing one does not pull in torch for the rest.
"""
