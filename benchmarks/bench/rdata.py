"""Read R's serialization format and lazy-load databases (``.rdx``/``.rdb``) from Python.

The Jane Austen corpus ships only as an R package (Debian ``r-cran-janeaustenr``), stored
in R's lazy-load format; reading it here means no R installation is needed to build the
bench's running-text datasets. Only what data packages use is supported: vectors,
pairlists, symbols, references, environments and the common ALTREP classes.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# SEXP types (R's Rinternals.h) and the serializer's pseudo-types (serialize.c).
NILSXP, SYMSXP, LISTSXP, CLOSXP, ENVSXP, PROMSXP, LANGSXP = 0, 1, 2, 3, 4, 5, 6
SPECIALSXP, BUILTINSXP, CHARSXP, LGLSXP, INTSXP, REALSXP, CPLXSXP = 7, 8, 9, 10, 13, 14, 15
STRSXP, DOTSXP, VECSXP, EXPRSXP, RAWSXP, S4SXP = 16, 17, 19, 20, 24, 25
REFSXP, NILVALUE_SXP, GLOBALENV_SXP, UNBOUNDVALUE_SXP, MISSINGARG_SXP = 255, 254, 253, 252, 251
BASENAMESPACE_SXP, NAMESPACESXP, PACKAGESXP, PERSISTSXP = 250, 249, 248, 247
EMPTYENV_SXP, BASEENV_SXP, ATTRLANGSXP, ATTRLISTSXP, ALTREP_SXP = 242, 241, 240, 239, 238

NA_INTEGER = -(2**31)


@dataclass
class RObject:
    """A non-vector R value (symbol, environment, language object…), kept for inspection."""

    kind: str
    value: Any = None
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass
class RVector:
    """An R vector: its Python values (``None`` for NA strings) and its attributes."""

    values: list[Any]
    attributes: dict[str, Any] = field(default_factory=dict)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.refs: list[Any] = []

    def bytes(self, n: int) -> bytes:
        chunk = self.data[self.pos:self.pos + n]
        if len(chunk) != n:
            raise ValueError("truncated R serialization")
        self.pos += n
        return chunk

    def int(self) -> int:
        return struct.unpack(">i", self.bytes(4))[0]

    def length(self) -> int:
        n = self.int()
        if n == -1:  # long vector: two more ints
            upper, lower = self.int(), self.int()
            n = (upper << 32) + lower
        return n

    def attributes(self, has_attr: bool) -> dict[str, Any]:
        return _pairlist_to_dict(self.item()) if has_attr else {}

    def item(self) -> Any:
        flags = self.int()
        kind = flags & 0xFF
        has_attr, has_tag = bool(flags & (1 << 9)), bool(flags & (1 << 10))
        if kind == NILVALUE_SXP:
            return None
        if kind in (EMPTYENV_SXP, BASEENV_SXP, GLOBALENV_SXP, UNBOUNDVALUE_SXP, MISSINGARG_SXP, BASENAMESPACE_SXP):
            return RObject("special", kind)
        if kind == REFSXP:
            index = flags >> 8 or self.int()
            return self.refs[index - 1]
        if kind == PERSISTSXP:
            names = self.item()
            obj = RObject("persist", names.values if isinstance(names, RVector) else names)
            self.refs.append(obj)
            return obj
        if kind == SYMSXP:
            symbol = RObject("symbol", self.item())
            self.refs.append(symbol)
            return symbol
        if kind in (NAMESPACESXP, PACKAGESXP):
            self.int()  # always 0
            obj = RObject("namespace", [self.item() for _ in range(self.int())])
            self.refs.append(obj)
            return obj
        if kind == ENVSXP:
            locked = self.int()
            env = RObject("environment", {"locked": locked})
            self.refs.append(env)
            env.value.update(enclos=self.item(), frame=self.item(), hashtab=self.item())
            env.attributes = _pairlist_to_dict(self.item())
            return env
        if kind in (LISTSXP, LANGSXP, CLOSXP, PROMSXP, DOTSXP, ATTRLANGSXP, ATTRLISTSXP):
            return self.pairlist(kind, has_attr, has_tag)
        if kind in (SPECIALSXP, BUILTINSXP):
            return RObject("builtin", self.bytes(self.int()).decode())
        if kind == CHARSXP:
            n = self.int()
            return None if n == -1 else self.bytes(n).decode("utf-8", errors="replace")
        if kind in (LGLSXP, INTSXP):
            n = self.length()
            values = [None if v == NA_INTEGER else v for v in struct.unpack(f">{n}i", self.bytes(4 * n))]
            if kind == LGLSXP:
                values = [None if v is None else bool(v) for v in values]
            return RVector(values, self.attributes(has_attr))
        if kind == REALSXP:
            n = self.length()
            return RVector(list(struct.unpack(f">{n}d", self.bytes(8 * n))), self.attributes(has_attr))
        if kind == CPLXSXP:
            n = self.length()
            parts = struct.unpack(f">{2 * n}d", self.bytes(16 * n))
            return RVector([complex(parts[i], parts[i + 1]) for i in range(0, 2 * n, 2)], self.attributes(has_attr))
        if kind == RAWSXP:
            return RVector([self.bytes(self.length())], self.attributes(has_attr))
        if kind in (STRSXP, VECSXP, EXPRSXP):
            n = self.length()
            return RVector([self.item() for _ in range(n)], self.attributes(has_attr))
        if kind == S4SXP:
            return RObject("S4", None, self.attributes(has_attr))
        if kind == ALTREP_SXP:
            return self.altrep()
        raise ValueError(f"unsupported R SEXP type {kind}")

    def pairlist(self, kind: int, has_attr: bool, has_tag: bool) -> Any:
        """Pairlists become lists of (tag, value); iterate over the cdr chain, not recursively."""
        entries: list[tuple[str | None, Any]] = []
        attributes: dict[str, Any] = {}
        while True:
            if has_attr:
                attributes.update(_pairlist_to_dict(self.item()))
            tag = self.item() if has_tag else None
            entries.append((tag.value if isinstance(tag, RObject) else tag, self.item()))
            flags = self.int()
            nxt = flags & 0xFF
            if nxt != kind or kind != LISTSXP:
                self.pos -= 4
                tail = self.item()
                break
            has_attr, has_tag = bool(flags & (1 << 9)), bool(flags & (1 << 10))
        if kind == LISTSXP:
            return RObject("pairlist", entries, attributes)
        return RObject({LANGSXP: "language", CLOSXP: "closure"}.get(kind, "pairlist"), (entries, tail), attributes)

    def altrep(self) -> Any:
        info, state, attr = self.item(), self.item(), self.item()
        cls = info.value[0][1].value if isinstance(info, RObject) and info.value else None
        attributes = _pairlist_to_dict(attr)
        if cls == "compact_intseq":
            n, start, step = (int(v) for v in state.values)
            return RVector([start + i * step for i in range(n)], attributes)
        if cls == "compact_realseq":
            n, start, step = state.values
            return RVector([start + i * step for i in range(int(n))], attributes)
        if cls == "deferred_string":
            source = state.value[0][1] if isinstance(state, RObject) else state
            return RVector([None if v is None else _format_number(v) for v in source.values], attributes)
        if cls and cls.startswith("wrap_"):
            inner = state.values[0]
            inner.attributes.update(attributes)
            return inner
        raise ValueError(f"unsupported ALTREP class {cls}")


def _format_number(value: Any) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _pairlist_to_dict(value: Any) -> dict[str, Any]:
    if isinstance(value, RObject) and value.kind == "pairlist":
        return {tag: item for tag, item in value.value}
    return {}


def unserialize(data: bytes) -> Any:
    """Decode one R-serialized object (XDR format, versions 2 and 3)."""
    if data[:2] != b"X\n":
        raise ValueError(f"only XDR R serialization is supported, got header {data[:2]!r}")
    reader = _Reader(data)
    reader.pos = 2
    version = reader.int()
    reader.int(), reader.int()  # writer's R version, minimal reader version
    if version == 3:
        reader.bytes(reader.int())  # native encoding name
    elif version != 2:
        raise ValueError(f"unsupported R serialization version {version}")
    return reader.item()


def read_rds(path: Path) -> Any:
    """``readRDS`` for gzip-, bzip2-, xz-compressed or plain files."""
    raw = path.read_bytes()
    for magic, opener in ((b"\x1f\x8b", gzip.decompress), (b"BZh", bz2.decompress), (b"\xfd7zXZ", lzma.decompress)):
        if raw.startswith(magic):
            raw = opener(raw)
            break
    return unserialize(raw)


def _decompress_chunk(chunk: bytes, compression: int) -> bytes:
    """One lazy-load record: 4-byte big-endian length, then the (typed) compressed payload."""
    expected = struct.unpack(">I", chunk[:4])[0]
    body = chunk[4:]
    if compression == 1:
        out = zlib.decompress(body)
    else:  # types 2 and 3 carry a one-byte method marker: '2' bzip2, 'X' xz, 'Z' zlib, '0' none
        marker, body = body[:1], body[1:]
        out = {b"2": bz2.decompress, b"X": lzma.decompress, b"Z": zlib.decompress, b"0": bytes}[marker](body)
    if len(out) != expected:
        raise ValueError(f"lazy-load record: expected {expected} bytes, got {len(out)}")
    return out


def read_lazyload_db(base: Path) -> dict[str, Any]:
    """Every variable of a lazy-load database (``base`` without ``.rdx``/``.rdb``), by name."""
    index = read_rds(base.with_suffix(".rdx"))
    entries = {name: item for name, item in zip(index.attributes["names"].values, index.values)}
    compressed = entries.get("compressed")
    compression = int(compressed.values[0]) if isinstance(compressed, RVector) else 1
    variables = entries["variables"]
    blob = base.with_suffix(".rdb").read_bytes()
    result = {}
    for name, where in zip(variables.attributes["names"].values, variables.values):
        offset, length = (int(v) for v in where.values)
        result[name] = unserialize(_decompress_chunk(blob[offset:offset + length], compression))
    return result
