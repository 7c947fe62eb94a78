"""aiohttp's own log of requests it could not parse, without what they carried.

When a request cannot be parsed (a header past 8 KiB, a control character in a header),
aiohttp logs "Error handling request" at ERROR with the parser's exception, whose message
quotes the start of the offending line: an `Authorization` header puts the caller's token in
the log. Every such request, from anyone, also made a traceback. The REST server logs through
`SERVER_LOGGER`, whose filter replaces those records with one debug line that names the
client and the kind of error, never the content.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)
SERVER_LOGGER = logging.getLogger("gateway.rest.server")
_UNPARSED = "Error handling request"


class _WithoutContent(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(_UNPARSED):
            return True
        error = record.exc_info[1] if record.exc_info else None
        client = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
        kind = type(error).__name__ if error is not None else "an error"
        logger.debug("an HTTP request from %s could not be parsed (%s); answered 400", client, kind)
        return False


SERVER_LOGGER.addFilter(_WithoutContent())
