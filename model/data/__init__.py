"""Images and where they come from: everything between a file (or a recorded URI) and a tensor.

- `images`: decode, resize and normalise; limits on bytes and pixels before decoding.
- `mvtec`: the MVTec AD folder layout (classes, train/good, test, ground_truth masks).
- `sample`: a procedural sample set, so the demo runs without any data.
- `roots`: which URIs may be read at all (configured directories or URL prefixes);
  `uri_reader`: reading a URI's bytes under them (the worker's events and the retraining's rows).
- `recorded_images`: reading a recorded inspection's image back through its URI, for retraining.
- `feature_cache`: frozen-backbone features cached on disk, keyed by file or by content.

Imports: `model.core`, `model.net` (the backbone the feature cache runs) and `schemas`.
"""
