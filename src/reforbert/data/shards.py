"""Pretraining instances on disk: compact binary shards, and the seed's JSON-lines files.

Binary shard folder (what ``reforbert pretraining-data`` writes by default)::

    metadata.json                 format, vocab digest, fingerprint and size, max_seq_len, seed, instances,
                                  shards
    shard-00000.tokens.npy        uint16, the token ids of all instances, concatenated
                                  ([CLS] A [SEP] B [SEP], exactly the model input)
    shard-00000.offsets.npy       int64, n + 1 entries: instance i is tokens[offsets[i]:offsets[i+1]]
    shard-00000.boundary.npy      uint16, length of [CLS] A [SEP]: token_type_id 0 before it, 1 after
    shard-00000.is_next.npy       uint8, 1 when B really follows A (next_sentence_label 0), 0 when random

Instances are unmasked: the collator masks them afresh every epoch. Arrays are memory-mapped, so
opening a corpus of any size costs almost no memory and every worker shares the page cache.

JSON-lines (``--jsonl``, the seed's format): one instance per line with keys ``tokens`` (pieces),
``segment``, ``is_next``, ``mask_idx``, ``mask_label``, already masked. Reading it back needs the
vocabulary to turn pieces into ids; the writer puts ``sentencepiece.vocab`` beside the files.
"""

from __future__ import annotations

import bisect
import io
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from reforbert.configuration_reforbert import IGNORE_INDEX
from reforbert.data.vocab import SENTENCEPIECE_MODEL_FILE, SENTENCEPIECE_VOCAB_FILE, vocabulary_fingerprint
from reforbert.errors import ReforBertInputError
from reforbert.fileio import sha256_of

SHARD_FORMAT = "reforbert-pretraining-shards"
JSONL_FORMAT = "reforbert-pretraining-jsonl"
FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"
ARRAYS = ("tokens", "offsets", "boundary", "is_next")


def shard_array_path(folder: Path, shard_name: str, array: str) -> Path:
    return folder / f"{shard_name}.{array}.npy"


# ----------------------------------------------------------------------------------------------
# Writing


class _NpyStreamWriter:
    """Append a 1-D array to a .npy file piece by piece, without holding it in memory.

    The header (which holds the length) is reserved at the start and filled in on close. A
    header for the largest possible length has the same padded size as for any shorter length
    (numpy pads headers to 64 bytes), which :meth:`close` checks.
    """

    _LONGEST = 10**15

    def __init__(self, path: Path, dtype: np.dtype) -> None:
        self.path = path
        self.dtype = np.dtype(dtype)
        self.length = 0
        self._handle = open(path, "wb")  # noqa: SIM115 -- stays open across append() calls
        self._header_size = len(self._header(self._LONGEST))
        self._handle.write(b"\0" * self._header_size)

    def _header(self, length: int) -> bytes:
        buffer = io.BytesIO()
        header = {
            "descr": np.lib.format.dtype_to_descr(self.dtype),
            "fortran_order": False,
            "shape": (length,),
        }
        np.lib.format.write_array_header_1_0(buffer, header)
        return buffer.getvalue()

    def append(self, values: np.ndarray) -> None:
        values = np.ascontiguousarray(values, dtype=self.dtype)
        self._handle.write(values.tobytes())
        self.length += values.size

    def close(self) -> None:
        header = self._header(self.length)
        if len(header) != self._header_size:  # cannot happen with numpy's 64-byte padding
            raise RuntimeError(f"npy header size changed while writing {self.path}")
        self._handle.seek(0)
        self._handle.write(header)
        self._handle.close()


class ShardWriter:
    """Write instances into numbered shards of about ``shard_tokens`` tokens each."""

    def __init__(self, folder: Path, shard_tokens: int = 1 << 25) -> None:
        self.folder = Path(folder)
        self.shard_tokens = shard_tokens
        self.shards: list[dict[str, Any]] = []
        self._tokens: _NpyStreamWriter | None = None
        self._lengths: list[np.ndarray] = []
        self._boundaries: list[np.ndarray] = []
        self._is_next: list[np.ndarray] = []

    @property
    def num_instances(self) -> int:
        return sum(shard["instances"] for shard in self.shards) + sum(len(x) for x in self._lengths)

    def add(
        self, tokens: np.ndarray, lengths: np.ndarray, boundaries: np.ndarray, is_next: np.ndarray
    ) -> None:
        """Append a block of instances: ``tokens`` concatenated, one length/boundary/is_next each."""
        if len(lengths) == 0:
            return
        if self._tokens is None:
            name = f"shard-{len(self.shards):05d}"
            self._name = name
            self._tokens = _NpyStreamWriter(shard_array_path(self.folder, name, "tokens"), np.uint16)
        self._tokens.append(tokens)
        self._lengths.append(np.asarray(lengths, dtype=np.int64))
        self._boundaries.append(np.asarray(boundaries, dtype=np.uint16))
        self._is_next.append(np.asarray(is_next, dtype=np.uint8))
        if self._tokens.length >= self.shard_tokens:
            self._close_shard()

    def _close_shard(self) -> None:
        if self._tokens is None:
            return
        self._tokens.close()
        lengths = np.concatenate(self._lengths)
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        np.save(shard_array_path(self.folder, self._name, "offsets"), offsets)
        np.save(shard_array_path(self.folder, self._name, "boundary"), np.concatenate(self._boundaries))
        np.save(shard_array_path(self.folder, self._name, "is_next"), np.concatenate(self._is_next))
        self.shards.append({"name": self._name, "instances": int(len(lengths)), "tokens": int(offsets[-1])})
        self._tokens = None
        self._lengths, self._boundaries, self._is_next = [], [], []

    def close(self, metadata: dict[str, Any]) -> dict[str, Any]:
        """Finish the last shard and write ``metadata.json``; return the metadata written."""
        self._close_shard()
        metadata = {
            "format": SHARD_FORMAT,
            "version": FORMAT_VERSION,
            **metadata,
            "num_instances": sum(shard["instances"] for shard in self.shards),
            "num_tokens": sum(shard["tokens"] for shard in self.shards),
            "shards": self.shards,
        }
        write_metadata(self.folder, metadata)
        return metadata


def write_metadata(folder: Path, metadata: dict[str, Any]) -> None:
    with open(Path(folder) / METADATA_FILE, "w", encoding="utf-8") as handle:
        json.dump(metadata, handle, ensure_ascii=False, indent=2, sort_keys=True)
        handle.write("\n")


# ----------------------------------------------------------------------------------------------
# Reading


def read_metadata(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / METADATA_FILE
    if not path.is_file():
        raise ReforBertInputError(f"no {METADATA_FILE}: not a pretraining-data folder", folder)
    try:
        with open(path, encoding="utf-8") as handle:
            metadata = json.load(handle)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ReforBertInputError(f"unreadable metadata: {error}", path) from None
    if not isinstance(metadata, dict):
        raise ReforBertInputError("unreadable metadata: not a JSON object", path)
    return metadata


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class PretrainingShards(Dataset):
    """The binary shard folder as a map-style dataset of unmasked instances."""

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder)
        self.metadata = read_metadata(self.path)
        if self.metadata.get("format") != SHARD_FORMAT:
            raise ReforBertInputError(
                f"format is {self.metadata.get('format')!r}, expected {SHARD_FORMAT!r}",
                self.path / METADATA_FILE,
            )
        self._check_shard_list()
        self._arrays = self._open_arrays()
        self._starts: list[int] = []
        total = 0
        for shard in self.metadata["shards"]:
            self._starts.append(total)
            total += shard["instances"]
        self._length = total

    def _check_shard_list(self) -> None:
        """The fields the reader relies on, so that a damaged metadata.json is named, not a KeyError."""
        shards = self.metadata.get("shards")
        if not isinstance(shards, list) or not all(
            isinstance(shard, dict)
            and isinstance(shard.get("name"), str)
            and Path(shard["name"]).name == shard["name"]  # a name, never a path out of the folder
            and _is_count(shard.get("instances"))
            for shard in shards
        ):
            raise ReforBertInputError(
                '"shards" must be a list of {"name": file name, "instances": count}',
                self.path / METADATA_FILE,
            )
        if not _is_count(self.metadata.get("vocab_size")) or self.metadata["vocab_size"] == 0:
            raise ReforBertInputError('"vocab_size" must be a positive integer', self.path / METADATA_FILE)

    def _open_arrays(self) -> list[dict[str, np.ndarray]]:
        opened = []
        for shard in self.metadata["shards"]:
            arrays = {}
            for array in ARRAYS:
                file = shard_array_path(self.path, shard["name"], array)
                if not file.is_file():
                    raise ReforBertInputError("shard file is missing", file)
                try:
                    arrays[array] = np.load(file, mmap_mode="r", allow_pickle=False)
                # numpy parses the header with ast and tokenize, so a damaged one fails in many ways
                # (ValueError, TypeError, SyntaxError, tokenize.TokenError, EOFError, OverflowError):
                # whatever np.load raises on this file means the file is not a valid array.
                except Exception as error:
                    raise ReforBertInputError(f"not a valid .npy array: {error}", file) from None
                if arrays[array].ndim != 1 or arrays[array].dtype.kind not in "ui":
                    raise ReforBertInputError(
                        f"expected a 1-D integer array, found {arrays[array].dtype} of shape "
                        f"{arrays[array].shape}",
                        file,
                    )
            self._check_lengths(shard, arrays)
            opened.append(arrays)
        return opened

    def _check_lengths(self, shard: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        """Offsets rise from 0 to the token count; one boundary and one label per instance."""
        offsets = arrays["offsets"]
        offsets_file = shard_array_path(self.path, shard["name"], "offsets")
        if len(offsets) != shard["instances"] + 1:
            raise ReforBertInputError("offsets do not match metadata.json", offsets_file)
        if offsets[0] != 0 or offsets[-1] != len(arrays["tokens"]) or np.any(np.diff(offsets) <= 0):
            raise ReforBertInputError(
                f"offsets must rise from 0 to the {len(arrays['tokens'])} tokens of the shard", offsets_file
            )
        for array in ("boundary", "is_next"):
            if len(arrays[array]) != shard["instances"]:
                raise ReforBertInputError(
                    f"{len(arrays[array])} entries for {shard['instances']} instances",
                    shard_array_path(self.path, shard["name"], array),
                )

    # Data-loader workers started by "spawn" receive a pickled dataset: send the paths, not the
    # memory-mapped arrays (which would pickle as full copies), and map them again there.
    def __getstate__(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items() if key != "_arrays"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._arrays = self._open_arrays()

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self._length:
            raise IndexError(index)
        shard = bisect.bisect_right(self._starts, index) - 1
        local = index - self._starts[shard]
        arrays = self._arrays[shard]
        start, end = int(arrays["offsets"][local]), int(arrays["offsets"][local + 1])
        input_ids = torch.from_numpy(arrays["tokens"][start:end].astype(np.int64))
        boundary = int(arrays["boundary"][local])
        # Checked here, one instance at a time: scanning every token when opening would read the corpus.
        if (
            int(input_ids.min()) < 0
            or int(input_ids.max()) >= self.metadata["vocab_size"]
            or boundary > end - start
        ):
            raise ReforBertInputError(
                f"instance {local} has a token id outside the vocabulary of {self.metadata['vocab_size']} "
                "or a segment boundary beyond its end",
                shard_array_path(self.path, self.metadata["shards"][shard]["name"], "tokens"),
            )
        token_type_ids = torch.zeros_like(input_ids)
        token_type_ids[boundary:] = 1
        # HF convention: next_sentence_label 0 means "B continues A", 1 means "B is random".
        return {
            "input_ids": input_ids,
            "token_type_ids": token_type_ids,
            "next_sentence_label": 0 if arrays["is_next"][local] else 1,
            "index": index,
        }


def _jsonl_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(
        p
        for p in path.iterdir()
        if p.is_file() and p.suffix in (".json", ".jsonl") and p.name != METADATA_FILE
    )
    if not files:
        raise ReforBertInputError("no .json/.jsonl files in this folder", path)
    return files


def load_piece_ids(vocab_file: Path) -> dict[str, int]:
    with open(vocab_file, encoding="utf-8") as handle:
        return {line.rstrip("\n").split("\t", 1)[0]: index for index, line in enumerate(handle)}


class PretrainingJsonLines(Dataset):
    """The seed's JSON-lines instances (already masked); lines are read lazily through a byte index."""

    def __init__(self, path: str | Path, vocab_dir: str | Path | None = None) -> None:
        self.path = Path(path)
        self.files = _jsonl_files(self.path)
        folder = self.path if self.path.is_dir() else self.path.parent
        self.metadata = read_metadata(folder) if (folder / METADATA_FILE).is_file() else {}
        vocab_file = (Path(vocab_dir) if vocab_dir is not None else folder) / SENTENCEPIECE_VOCAB_FILE
        if not vocab_file.is_file():
            raise ReforBertInputError(
                f"needs the vocabulary ({SENTENCEPIECE_VOCAB_FILE}) to read pieces; pass vocab_dir",
                vocab_file,
            )
        self.piece_ids = load_piece_ids(vocab_file)
        self._index: list[tuple[int, int, int]] = []  # (file number, byte offset, line number)
        for number, file in enumerate(self.files):
            with open(file, "rb") as handle:
                offset = 0
                for line_number, line in enumerate(handle, start=1):
                    if line.strip():
                        self._index.append((number, offset, line_number))
                    offset += len(line)
        if not self._index:
            raise ReforBertInputError("no instances", self.path)

    def __len__(self) -> int:
        return len(self._index)

    def _ids(self, pieces: Iterable[str], file: Path, line_number: int) -> list[int]:
        try:
            return [self.piece_ids[piece] for piece in pieces]
        except KeyError as error:
            raise ReforBertInputError(f"piece {error} is not in the vocabulary", file, line_number) from None

    def __getitem__(self, index: int) -> dict[str, Any]:
        number, offset, line_number = self._index[index]
        file = self.files[number]
        with open(file, "rb") as handle:
            handle.seek(offset)
            raw = handle.readline()
        try:
            record = json.loads(raw.decode("utf-8"))
            input_ids = torch.tensor(self._ids(record["tokens"], file, line_number), dtype=torch.long)
            token_type_ids = torch.tensor(record["segment"], dtype=torch.long)
            labels = torch.full_like(input_ids, IGNORE_INDEX)
            if record["mask_idx"]:
                labels[torch.tensor(record["mask_idx"])] = torch.tensor(
                    self._ids(record["mask_label"], file, line_number)
                )
            is_next = int(record["is_next"])
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, IndexError) as error:
            raise ReforBertInputError(f"not a pretraining instance: {error!r}", file, line_number) from None
        if len(token_type_ids) != len(input_ids):
            raise ReforBertInputError("tokens and segment differ in length", file, line_number)
        return {
            "input_ids": input_ids,
            "token_type_ids": token_type_ids,
            "labels": labels,
            "next_sentence_label": 0 if is_next else 1,
            "index": index,
        }


def open_pretraining_data(path: str | Path, vocab_dir: str | Path | None = None) -> Dataset:
    """Open a binary shard folder or JSON-lines file/folder made by ``reforbert pretraining-data``.

    Items are dicts with ``input_ids``, ``token_type_ids`` (LongTensor), ``next_sentence_label``
    (0 = B follows A, 1 = B is random), ``index`` and, for the already-masked JSON lines, ``labels``.
    """
    path = Path(path)
    if not path.exists():
        raise ReforBertInputError("no such file or folder", path)
    if (
        path.is_dir()
        and (path / METADATA_FILE).is_file()
        and read_metadata(path).get("format") == SHARD_FORMAT
    ):
        return PretrainingShards(path)
    return PretrainingJsonLines(path, vocab_dir=vocab_dir)


def check_vocab(dataset_metadata: dict[str, Any] | Dataset, vocab_dir: str | Path) -> None:
    """Refuse to train on instances whose ids come from another vocabulary."""
    metadata = getattr(dataset_metadata, "metadata", dataset_metadata)
    model_file = Path(vocab_dir) / SENTENCEPIECE_MODEL_FILE
    if not model_file.is_file():
        raise ReforBertInputError("vocabulary model is missing", model_file)
    # Data made since the fingerprint existed carries it; older data only the model file's digest, which
    # differs between two trainings of the same vocabulary (see vocabulary_fingerprint).
    if "vocab_fingerprint" in metadata:
        expected, actual = metadata["vocab_fingerprint"], vocabulary_fingerprint(model_file)
    elif "vocab_sha256" in metadata:
        expected, actual = metadata["vocab_sha256"], sha256_of(model_file)
    else:
        return  # seed-made JSON lines carry no fingerprint; nothing to compare
    if actual != expected:
        data_path = getattr(dataset_metadata, "path", None)
        where = f" (data: {data_path})" if data_path is not None else ""
        raise ReforBertInputError(
            f"the pretraining data was made with another vocabulary{where}: sha256 {expected[:12]}... "
            f"!= {actual[:12]}...; remake the data with this vocabulary",
            model_file,
        )
