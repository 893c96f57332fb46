"""Embedding files: `.npz` (one member per key, float32 vector) and Kaldi binary ark/scp float vectors.

Kaldi's binary ark entry for a float vector is
    `key` b" " b"\\0B" b"FV " b"\\x04" <int32 dim, little-endian> <dim float32>
(`DV ` and float64 for double vectors); an scp line `key file.ark:offset` points at the b"\\0B".
Text arks (`key [ 1.0 2.0 ]`) are read too. Every write is atomic: a temporary file, then a rename.
"""

from __future__ import annotations

import io
import logging
import struct
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from speakerforge.atomic import atomic_open, atomic_path
from speakerforge.errors import DataError, where

log = logging.getLogger(__name__)

SUFFIXES = (".npz", ".scp", ".ark")


# --------------------------------------------------------------------------------------------------------------
# the in-memory form
class Embeddings(Mapping[str, np.ndarray]):
    """Keys and an (N, D) float32 matrix, row i for key i; behaves as a read-only mapping key -> vector."""

    def __init__(self, keys: Sequence[str], matrix: np.ndarray, source: str = "<memory>"):
        matrix = np.asarray(matrix)
        if matrix.ndim != 2 or matrix.shape[0] != len(keys):
            raise ValueError(f"expected a ({len(keys)}, D) matrix, got shape {matrix.shape}")
        self.keys_list = list(keys)
        self.matrix = np.ascontiguousarray(matrix, dtype=np.float32)
        self.source = source
        self.index = {k: i for i, k in enumerate(self.keys_list)}
        if len(self.index) != len(self.keys_list):
            seen: set[str] = set()
            dup = next(k for k in self.keys_list if k in seen or seen.add(k))
            raise DataError(f"{source}: key {dup!r} appears more than once; embedding keys must be unique")
        bad = ~np.isfinite(self.matrix).all(axis=1)
        if bad.any():
            first = self.keys_list[int(np.flatnonzero(bad)[0])]
            raise DataError(
                f"{source}: {int(bad.sum())} embeddings contain NaN or inf (first: {first!r}); re-extract them"
            )

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, np.ndarray], source: str = "<memory>") -> Embeddings:
        """Stack a key -> vector mapping; vectors must share one dimension."""
        if isinstance(mapping, Embeddings):
            return mapping
        keys = list(mapping)
        if not keys:
            raise DataError(f"{source}: no embeddings")
        vecs = [_as_vector(mapping[k], source, k) for k in keys]
        dim = vecs[0].shape[0]
        for k, v in zip(keys, vecs):
            if v.shape[0] != dim:
                raise DataError(
                    f"{source}: embedding {k!r} has dimension {v.shape[0]}, but {keys[0]!r} has {dim}; "
                    "all embeddings in one file must come from the same model"
                )
        return cls(keys, np.stack(vecs), source=source)

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])

    def rows(self, keys: Sequence[str], what: str = "keys") -> np.ndarray:
        """Row indices of `keys`; unknown keys are one error listing how many and the first few."""
        index = self.index
        try:
            return np.fromiter((index[k] for k in keys), dtype=np.int64, count=len(keys))
        except KeyError:
            missing = list(dict.fromkeys(k for k in keys if k not in index))
            raise DataError(
                f"{len(missing)} {what} have no embedding in {self.source} (first: "
                f"{', '.join(missing[:5])}); extract embeddings for them or fix the list"
            ) from None

    def mean(self) -> np.ndarray:
        """Mean vector (float64), e.g. of a training set, for mean subtraction before cosine scoring."""
        return self.matrix.mean(axis=0, dtype=np.float64)

    def __getitem__(self, key: str) -> np.ndarray:
        return self.matrix[self.index[key]]

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys_list)

    def __len__(self) -> int:
        return len(self.keys_list)

    def __repr__(self) -> str:
        return f"Embeddings({len(self)} x {self.dim} from {self.source})"


def _as_vector(value: np.ndarray, source: str, key: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim == 2 and arr.shape[0] == 1:  # (1, D), as some extractors save
        arr = arr[0]
    if arr.ndim != 1 or arr.shape[0] == 0:
        raise DataError(f"{source}: embedding {key!r} has shape {arr.shape}; expected a vector (D,)")
    if not np.issubdtype(arr.dtype, np.floating):
        raise DataError(f"{source}: embedding {key!r} has dtype {arr.dtype}; expected float32 or float64")
    return arr.astype(np.float32, copy=False)


# --------------------------------------------------------------------------------------------------------------
# public entry points
def load_embeddings(path: str | Path) -> Embeddings:
    """Read `.npz`, Kaldi `.scp` or Kaldi `.ark` embeddings."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(f"{path}: unknown embedding file type {suffix or '(none)'!r}; use .npz, .scp or .ark")
    if p.is_dir():
        raise DataError(f"{path}: is a directory; expected an embedding file")
    if not p.is_file():
        raise DataError(f"{path}: embedding file not found")
    if suffix == ".npz":
        emb = read_npz(p)
    elif suffix == ".scp":
        emb = read_kaldi_scp(p)
    else:
        emb = read_kaldi_ark(p)
    log.info("%s: %d embeddings of dimension %d", path, len(emb), emb.dim)
    return emb


def save_embeddings(path: str | Path, embeddings: Mapping[str, np.ndarray]) -> None:
    """Write `.npz`, or Kaldi `.ark` with its `.scp` beside it (same stem)."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".npz":
        write_npz(p, embeddings)
    elif suffix == ".ark":
        write_kaldi(p, p.with_suffix(".scp"), embeddings)
    else:
        raise DataError(f"{path}: cannot write embeddings as {suffix or '(no suffix)'!r}; use .npz or .ark")


# --------------------------------------------------------------------------------------------------------------
# npz
def write_npz(path: str | Path, embeddings: Mapping[str, np.ndarray]) -> None:
    """One uncompressed `key.npy` member per key (any key text works, unlike `np.savez(**kw)`)."""
    emb = Embeddings.from_mapping(embeddings, source=str(path))
    # Every member has the same .npy header (dtype, shape); build it once.
    head = io.BytesIO()
    np.lib.format.write_array(head, emb.matrix[0], allow_pickle=False)
    header = head.getvalue()[: -emb.matrix[0].nbytes]
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for key, row in zip(emb.keys_list, emb.matrix):
                info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                zf.writestr(info, header + row.tobytes())


def read_npz(path: str | Path) -> Embeddings:
    """Read a key -> vector `.npz` (no pickles); any numpy-written npz, stored or compressed."""
    try:
        mapping = _read_npz_members(Path(path))
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, struct.error) as exc:
        raise DataError(
            f"{path}: not a readable .npz file ({exc}); write embeddings with speakerforge.eval.embio.save_embeddings"
        ) from None
    return Embeddings.from_mapping(mapping, source=str(path))


def _read_npz_members(path: Path) -> dict[str, np.ndarray]:
    # np.load's NpzFile costs ~90 us per member (zip member object + literal_eval of the header); embedding files
    # have 1e5 members with identical headers, so stored members are sliced from the file and headers are cached.
    data = memoryview(path.read_bytes())
    headers: dict[bytes, tuple[np.dtype, tuple[int, ...], bool]] = {}
    out: dict[str, np.ndarray] = {}
    with zipfile.ZipFile(path) as zf:  # only its central directory is read here
        infos = zf.infolist()
        _check_declared_sizes(path, infos, len(data))
        for info in infos:
            if info.is_dir():
                continue
            key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            if info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 0x1:
                name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)
                start = info.header_offset + 30 + name_len + extra_len
                member = data[start : start + info.file_size]
            else:
                member = memoryview(zf.read(info))
            out[key] = _parse_npy(member, headers, info.filename)
    return out


# An embedding is a vector of at most this many values (8 bytes each at most), plus the .npy header.
MAX_MEMBER_BYTES = 65536 * 8 + 4096
MAX_INFLATION = 50  # compressed embeddings shrink little; a zip bomb inflates thousands of times


def _check_declared_sizes(path: Path, infos: list[zipfile.ZipInfo], file_bytes: int) -> None:
    """Refuse, before inflating anything, a member that declares more than one embedding's worth of bytes, or
    members that declare far more than the file could hold (a zip bomb)."""
    total = 0
    for info in infos:
        if info.file_size > MAX_MEMBER_BYTES:
            raise ValueError(
                f"member {info.filename} declares {info.file_size} bytes; an embedding is at most "
                f"{MAX_MEMBER_BYTES} bytes"
            )
        total += info.file_size
    if total > MAX_INFLATION * file_bytes + (1 << 20):
        raise ValueError(f"its members declare {total} bytes, {total // max(1, file_bytes)} times the file's size")


def _parse_npy(member: memoryview, cache: dict, name: str) -> np.ndarray:
    if bytes(member[:6]) != b"\x93NUMPY":
        raise ValueError(f"member {name} is not a .npy array")
    major = member[6]
    size_fmt, start = ("<H", 10) if major == 1 else ("<I", 12)
    (header_len,) = struct.unpack_from(size_fmt, member, 8)
    header = bytes(member[: start + header_len])
    if header not in cache:
        fh = io.BytesIO(header)
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            cache[header] = np.lib.format.read_array_header_1_0(fh)
        elif version == (2, 0):
            cache[header] = np.lib.format.read_array_header_2_0(fh)
        else:  # rare (utf-8 headers): let numpy read it, uncached
            return np.lib.format.read_array(io.BytesIO(member), allow_pickle=False)
    shape, fortran, dtype = cache[header]
    if dtype.hasobject:
        raise ValueError(f"member {name} holds Python objects; only numeric arrays are read")
    count = int(np.prod(shape, dtype=np.int64))
    arr = np.frombuffer(member, dtype=dtype, count=count, offset=start + header_len)
    return arr.reshape(shape, order="F" if fortran else "C")


# --------------------------------------------------------------------------------------------------------------
# Kaldi ark/scp
_BINARY = b"\0B"
_TOKENS = {b"FV ": np.dtype("<f4"), b"DV ": np.dtype("<f8")}


def write_kaldi(
    ark_path: str | Path, scp_path: str | Path | None, embeddings: Mapping[str, np.ndarray], double: bool = False
) -> None:
    """Write binary float (`FV`) or double (`DV`) vectors to an ark, and an scp with byte offsets."""
    emb = Embeddings.from_mapping(embeddings, source=str(ark_path))
    bad = next((k for k in emb.keys_list if not k or any(c.isspace() for c in k)), None)
    if bad is not None:
        raise DataError(f"{ark_path}: key {bad!r} is empty or contains whitespace; Kaldi keys cannot")
    token, dtype = (b"DV ", "<f8") if double else (b"FV ", "<f4")
    head = token + b"\x04" + struct.pack("<i", emb.dim)
    scp_lines = []
    with atomic_open(ark_path, "wb") as ark_fh:
        for key, row in zip(emb.keys_list, emb.matrix):
            ark_fh.write(key.encode("utf-8") + b" ")
            scp_lines.append(f"{key} {ark_path}:{ark_fh.tell()}\n")
            ark_fh.write(_BINARY + head + row.astype(dtype).tobytes())
    if scp_path is not None:  # written after the ark is in place, so it never points into a missing file
        with atomic_open(scp_path, "w") as scp_fh:
            scp_fh.writelines(scp_lines)


def _parse_vector(buf: bytes | memoryview, pos: int, origin: str) -> tuple[np.ndarray, int]:
    """Parse one vector at `pos` (binary or text); return it and the position after it."""
    if bytes(buf[pos : pos + 2]) == _BINARY:
        token = bytes(buf[pos + 2 : pos + 5])
        dtype = _TOKENS.get(token)
        if dtype is None:
            what = token.decode("latin-1").strip() or "nothing"
            raise DataError(
                f"{origin}: found Kaldi object {what!r}, expected a float vector (FV or DV); "
                "matrices and compressed matrices are not embeddings"
            )
        if bytes(buf[pos + 5 : pos + 6]) != b"\x04" or len(buf) < pos + 10:
            raise DataError(f"{origin}: corrupt vector header (expected int32 size marker 4)")
        (dim,) = struct.unpack_from("<i", buf, pos + 6)
        start = pos + 10
        end = start + dim * dtype.itemsize
        if dim < 0 or end > len(buf):
            raise DataError(f"{origin}: vector of dimension {dim} runs past the end of the file (truncated ark?)")
        return np.frombuffer(buf, dtype=dtype, count=dim, offset=start).astype(np.float32), end
    # text form: optional spaces, "[", numbers, "]"
    end = bytes(buf[pos : pos + (1 << 22)]).find(b"]")
    text = bytes(buf[pos : pos + end + 1]).decode("latin-1") if end >= 0 else ""
    if not text.strip().startswith("["):
        raise DataError(f"{origin}: neither a binary Kaldi vector (\\0B) nor a text vector `[ ... ]`")
    try:
        vec = np.array(text.strip()[1:-1].split(), dtype=np.float32)
    except ValueError:
        raise DataError(f"{origin}: text vector contains a non-number") from None
    return vec, pos + end + 1


def read_kaldi_ark(path: str | Path) -> Embeddings:
    """Read every `key vector` entry of an ark, in order."""
    buf = memoryview(Path(path).read_bytes())
    mapping: dict[str, np.ndarray] = {}
    pos = 0
    while pos < len(buf):
        while pos < len(buf) and buf[pos] in b" \t\r\n":
            pos += 1
        if pos >= len(buf):
            break
        space = bytes(buf[pos : pos + 4096]).find(b" ")
        if space <= 0:
            raise DataError(f"{path}@{pos}: expected `key ` before a vector; not a Kaldi ark?")
        key = bytes(buf[pos : pos + space]).decode("utf-8", errors="replace")
        if key in mapping:
            raise DataError(f"{path}@{pos}: key {key!r} appears more than once")
        mapping[key], pos = _parse_vector(buf, pos + space + 1, f"{path}@{pos} ({key})")
    if not mapping:
        raise DataError(f"{path}: ark file holds no vectors")
    return Embeddings.from_mapping(mapping, source=str(path))


def read_kaldi_scp(path: str | Path) -> Embeddings:
    """Read `key file.ark:offset` lines; each ark is read once; relative arks are tried from the cwd and the scp."""
    scp = Path(path)
    entries: list[tuple[str, Path, int, int]] = []
    for n, line in enumerate(scp.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        target = parts[1].strip() if len(parts) == 2 else ""
        ark, _, offset = target.rpartition(":")
        if not ark or not offset.isdigit():
            raise DataError(f"{where(path, n)}: expected `key file.ark:offset`, got {line.strip()[:80]!r}")
        ark_path = _locate_ark(Path(ark), scp)
        entries.append((parts[0], ark_path, int(offset), n))
    if not entries:
        raise DataError(f"{path}: scp file is empty")
    cache: dict[Path, memoryview] = {}
    mapping: dict[str, np.ndarray] = {}
    for key, ark_path, offset, n in entries:
        if ark_path not in cache:
            if not ark_path.is_file():
                raise DataError(f"{where(path, n)}: ark file {ark_path} not found")
            cache[ark_path] = memoryview(ark_path.read_bytes())
        if key in mapping:
            raise DataError(f"{where(path, n)}: key {key!r} appears more than once")
        buf = cache[ark_path]
        if offset >= len(buf):
            raise DataError(f"{where(path, n)}: offset {offset} is past the end of {ark_path}")
        mapping[key], _ = _parse_vector(buf, offset, f"{where(path, n)} ({ark_path}:{offset})")
    return Embeddings.from_mapping(mapping, source=str(path))


def _locate_ark(ark: Path, scp: Path) -> Path:
    """Kaldi writes the ark path as given; when the scp has moved, look beside it too."""
    if ark.is_absolute() or ark.exists():
        return ark
    for candidate in (scp.parent / ark, scp.parent / ark.name):
        if candidate.exists():
            return candidate
    return ark
