"""What every layer of `model` shares and no domain owns: writing a file so that a reader never
sees half of it, and the clock.

- `files`: atomic writes (a temporary file in the same folder, then one rename).
- `clock`: the current time in UTC, and the time tag that names a run's folder.
- `backoff`: the doubling waits every retry loop uses.

Imports: the standard library only.
"""
