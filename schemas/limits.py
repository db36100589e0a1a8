"""The bounds every contract shares: what an event may carry, what a result or label holds, and
what a SQL column stores. One definition, so a value the wire contract accepts always fits its
column (an event id of 200 characters is never truncated, or refused, by the database).
"""

from __future__ import annotations

EVENT_ID_LENGTH = 200  # printable characters (schemas.events.EVENT_ID_PATTERN)
NAME_LENGTH = 100  # line, station, product class
URI_LENGTH = 2048
VERSION_LENGTH = 100  # a model version id
PERSON_LENGTH = 200  # who labelled or promoted
NOTE_LENGTH = 2000  # a label's note, a dead letter's detail
