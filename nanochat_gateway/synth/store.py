"""The output file and its sidecar: written line by line, so an interrupted run loses nothing.

The output holds only conversations, one CustomJSON line each. The sidecar (``<out>.meta``, JSON
lines) holds what the output cannot: a header per run (seed, model) and one record per attempted
index, ``{"index", "category", "status", "reasons", "digest"}``, status "accepted", "rejected" or
"failed". A record is written and flushed before its line, so a crash between the two leaves a record
whose line is missing, which a resumed run detects by digest and asks again; never a line without
a record, which would be asked again and written twice. A crash mid-line leaves a truncated last line
in either file; opening cuts it off.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nanochat_gateway.synth.conversation import Message, conversation_problems, line_digest, to_line

SIDECAR_SUFFIX = ".meta"


class StoreError(Exception):
    """The files cannot be resumed as they are; the message says what to do."""


def sidecar_path(out: Path) -> Path:
    return out.with_name(out.name + SIDECAR_SUFFIX)


@dataclass
class Sidecar:
    headers: list[dict[str, Any]] = field(default_factory=list)
    records: dict[int, dict[str, Any]] = field(default_factory=dict)  # the latest record per index


def read_sidecar(path: Path) -> Sidecar:
    """The sidecar's headers and latest record per index; a truncated last line is ignored."""
    sidecar = Sidecar()
    if not path.exists():
        return sidecar
    lines = path.read_text(encoding="utf-8").split("\n")
    for number, text in enumerate(lines, 1):
        if not text.strip():
            continue
        try:
            entry = json.loads(text)
        except json.JSONDecodeError:
            if number == len(lines):  # the unterminated tail of a crash
                break
            raise StoreError(f"{path}:{number}: not valid JSON; delete the sidecar to start its records afresh") from None
        if "synth" in entry:
            sidecar.headers.append(entry)
        elif isinstance(entry.get("index"), int):
            sidecar.records[entry["index"]] = entry
    return sidecar


def cut_truncated_tail(path: Path) -> int:
    """Remove an unterminated last line (a write cut short); returns the bytes removed."""
    if not path.exists():
        return 0
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return 0
    keep = data.rfind(b"\n") + 1  # 0 when the only line is the truncated one
    with open(path, "rb+") as f:
        f.truncate(keep)
    return len(data) - keep


@dataclass
class StoredLines:
    digests: set[str] = field(default_factory=set)
    first_messages: list[str] = field(default_factory=list)


def read_conversations(path: Path) -> StoredLines:
    """Digests and first user messages of every line; raises StoreError for an invalid line."""
    stored = StoredLines()
    if not path.exists():
        return stored
    with open(path, encoding="utf-8") as f:
        for number, raw in enumerate(f, 1):
            text = raw.rstrip("\n")
            if not text.strip():
                continue
            try:
                problems = conversation_problems(json.loads(text))
            except json.JSONDecodeError as exc:
                problems = [f"not valid JSON ({exc.msg})"]
            if problems:
                raise StoreError(f"{path}:{number}: {problems[0]}; `nanochat-gateway synth check {path}` lists "
                                 "every problem. Fix or remove the line, or pass --no-resume to start over.")
            stored.digests.add(line_digest(text))
            stored.first_messages.append(json.loads(text)[0]["content"])
    return stored


class ConversationStore:
    """Appends accepted conversations and per-index records; knows what earlier runs did."""

    def __init__(self, out: Path, *, resume: bool, header: dict[str, Any]) -> None:
        self.out, self.sidecar = out, sidecar_path(out)
        self.repairs: list[str] = []
        self.done: set[int] = set()
        lines = StoredLines()
        if resume:
            lines = self._load(header)
        self.first_messages = lines.first_messages
        self.written = len(lines.first_messages)
        out.parent.mkdir(parents=True, exist_ok=True)
        # O_APPEND: each line goes out in one write() at the end of the file, whatever else happened to it.
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | (0 if resume else os.O_TRUNC)
        self._lines = os.open(out, flags, 0o644)
        self._records = os.open(self.sidecar, flags, 0o644)
        self._write(self._records, json.dumps({"synth": "safety", **header}))

    def _load(self, header: dict[str, Any]) -> StoredLines:
        for path in (self.out, self.sidecar):
            removed = cut_truncated_tail(path)
            if removed:
                self.repairs.append(f"removed a truncated last line ({removed} bytes) from {path}")
        lines = read_conversations(self.out)
        sidecar = read_sidecar(self.sidecar)
        if sidecar.headers:
            first = sidecar.headers[0]
            for key in ("seed", "borderline_fraction"):
                if first.get(key) != header.get(key):
                    raise StoreError(f"{self.out} was started with {key.replace('_', '-')} {first.get(key)}, not "
                                     f"{header.get(key)}: pass the same value to resume it, or choose another --out")
        elif lines.first_messages:
            self.repairs.append(f"{self.out} has {len(lines.first_messages)} conversations and no sidecar; "
                                "they count toward --count and toward duplicate detection")
        for index, record in sorted(sidecar.records.items()):
            if record.get("status") == "rejected":
                self.done.add(index)
            elif record.get("status") == "accepted":
                if record.get("digest") in lines.digests:
                    self.done.add(index)
                else:
                    self.repairs.append(f"index {index} was recorded but its line is missing; it is asked again")
        return lines

    def append(self, index: int, category: str, messages: list[Message]) -> None:
        """Write an accepted conversation: its record first, then its line, each flushed to disk."""
        line = to_line(messages)
        self._write(self._records, json.dumps({"index": index, "category": category, "status": "accepted",
                                               "digest": line_digest(line)}))
        self._write(self._lines, line)
        self.first_messages.append(messages[0]["content"])
        self.written += 1
        self.done.add(index)

    def record(self, index: int, category: str, status: str, reasons: list[str], detail: str = "") -> None:
        """Record a rejected or failed attempt (a failed one is asked again by a resumed run)."""
        entry: dict[str, Any] = {"index": index, "category": category, "status": status, "reasons": reasons}
        if detail:
            entry["detail"] = detail[:500]
        self._write(self._records, json.dumps(entry, ensure_ascii=False))
        if status == "rejected":
            self.done.add(index)

    @staticmethod
    def _write(fd: int, line: str) -> None:
        data = (line + "\n").encode("utf-8")
        while data:
            data = data[os.write(fd, data):]
        os.fsync(fd)

    def close(self) -> None:
        os.close(self._lines)
        os.close(self._records)
