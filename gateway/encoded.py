"""One streamed message and its encodings, each made at most once, however many streams send
it: the gRPC wire bytes, the Server-Sent Event and the NDJSON line. A thousand watchers of one
event cost one encoding per transport; the watch's `Item` and the collection watch's
`CollectionItem` are both this."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Protocol

from google.protobuf import json_format
from google.protobuf.message import Message


def message_json(message: Message) -> str:
    """A streamed message as one line of JSON (proto field names, every field): SSE and NDJSON."""
    data = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


class Encoded:
    """A message (`message`, from the subclass) with its encodings made on first use."""

    __slots__ = ("_ndjson", "_sse", "_wire")

    def __init__(self) -> None:
        self._wire: bytes | None = None
        self._sse: bytes | None = None
        self._ndjson: bytes | None = None

    @property
    def message(self) -> Message:
        raise NotImplementedError

    def _event(self) -> bytes:
        """The Server-Sent Event, made once (`sse`)."""
        raise NotImplementedError

    @property
    def ends(self) -> bool:
        """Whether the stream ends after this message (its `event: end` goes in the same send)."""
        return False

    @property
    def wire(self) -> bytes:
        if self._wire is None:
            self._wire = self.message.SerializeToString()
        return self._wire

    @property
    def sse(self) -> bytes:
        if self._sse is None:
            self._sse = self._event()
        return self._sse

    @property
    def ndjson(self) -> bytes:
        if self._ndjson is None:
            self._ndjson = (message_json(self.message) + "\n").encode()
        return self._ndjson


class Written(Protocol):
    """What an SSE or NDJSON stream writes: one message, or several joined (`Joined`)."""

    @property
    def sse(self) -> bytes: ...

    @property
    def ndjson(self) -> bytes: ...

    @property
    def ends(self) -> bool: ...


class Joined:
    """Messages ready together, written to a stream at once: one socket send for a watcher's
    whole wake-up (QUEUED and STARTED come together; a watcher behind has many)."""

    __slots__ = ("_parts",)

    def __init__(self, parts: Sequence[Encoded]) -> None:
        self._parts = parts

    @property
    def sse(self) -> bytes:
        return b"".join(part.sse for part in self._parts)

    @property
    def ndjson(self) -> bytes:
        return b"".join(part.ndjson for part in self._parts)

    @property
    def ends(self) -> bool:
        return self._parts[-1].ends
