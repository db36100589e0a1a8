"""The review station (`python -m worker.review`): the web page where quality engineers judge
the worker's results and label them, reading the same SQL records, heatmap store and image roots
as the worker.

- `settings`: one settings class (`REVIEW_*`), the stores' fields shared with the worker's;
- `accounts`: who may sign in (argon2 hashes in a users file) and what they may do (roles);
- `sessions`: the signed session cookie and its CSRF token;
- `queue`: which inspections to look at first, filtered and paged by keyset (SQL);
- `media`: an inspection's image and its anomaly map as a colour overlay scaled to the
  class threshold, read only through the URIs the worker recorded, under the configured roots;
- `classes`, `charts`: the class page's aggregates (distribution on the confidence scale,
  drift against the calibration, anomaly rate per day, labelled mistakes) and their SVG
  geometry;
- `station`: what every route shares (settings, stores, sessions, templates) and who is
  signed in;
- `models`: the models page's view of the registry and of what the workers serve (read-only);
- `app`: the HTTP routes (FastAPI) and their pages (`templates/`, `static/`: no CDN);
  `class_routes`, `model_routes`: the class and models pages;
- `demo`: the station on what `python -m worker.demo` left;
- `__main__`: the command.
"""
