"""GRAD: grid-based continuous normal representation for unified anomaly detection.

Layout follows timm: building blocks in `layers`, the architecture in `grad`, one registry of
decoder configurations in `config`; the numerical core (`refinement`, `scoring`, `calibration`,
`metrics`) is pure functions; files, CLIs and devices stay at the edges.
"""
