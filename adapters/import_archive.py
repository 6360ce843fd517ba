"""Reading an uploaded adapter archive (zip, tar or tar.gz) into memory, without trusting its member paths.

Nothing is extracted to disk here. The archive may contain exactly ``adapter_config.json`` and
``adapter_model.safetensors``, at its root or inside one top-level folder, and every other member is rejected.
"""

from __future__ import annotations

import io
import re
import stat
import tarfile
import zipfile
import zlib
from dataclasses import dataclass

from adapters.import_errors import ArchiveTooLargeError, InvalidArchiveError, UnsupportedWeightsFormatError

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
REQUIRED_FILES = (CONFIG_NAME, WEIGHTS_NAME)
# Formats that unpickle on load and can therefore run arbitrary code.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
# Headers, padding and end-of-archive blocks that a tar stream adds around its files.
TAR_OVERHEAD_BYTES = 64 * 1024

_GZIP_MAGIC = b"\x1f\x8b"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")
_LAYOUT_RULE = (
    f"the archive may contain only {CONFIG_NAME} and {WEIGHTS_NAME}, at its root or inside one top-level folder"
)


@dataclass(frozen=True)
class AdapterFiles:
    """The two files of an adapter, read from an archive."""

    config: bytes
    weights: bytes


@dataclass
class _Members:
    """Regular files and folders of an archive, by normalised path, with the running uncompressed size."""

    max_bytes: int
    files: dict[tuple[str, ...], bytes]
    folders: set[tuple[str, ...]]
    total_bytes: int = 0

    def remaining_bytes(self, declared_size: int) -> int:
        """Returns how many more bytes may be read. Raises when a member's declared size is already too large."""
        remaining = self.max_bytes - self.total_bytes
        if declared_size > remaining:
            raise _too_large(self.max_bytes)
        return remaining

    def add_file(self, path: tuple[str, ...], data: bytes) -> None:
        if path in self.files or path in self.folders:
            raise InvalidArchiveError(f"the archive contains {'/'.join(path)!r} twice; {_LAYOUT_RULE}")
        self.total_bytes += len(data)
        if self.total_bytes > self.max_bytes:
            raise _too_large(self.max_bytes)
        self.files[path] = data

    def add_folder(self, path: tuple[str, ...]) -> None:
        if path in self.files:
            raise InvalidArchiveError(f"the archive contains {'/'.join(path)!r} twice; {_LAYOUT_RULE}")
        self.folders.add(path)


def read_adapter_archive(data: bytes, *, max_bytes: int) -> AdapterFiles:
    """Reads the adapter's two files from a zip, tar or gzip-compressed tar archive held in memory.

    The format is recognised from the content, not from a file name or content type. Raises InvalidArchiveError,
    UnsupportedWeightsFormatError, or ArchiveTooLargeError when the uncompressed files exceed ``max_bytes``.
    """
    if not data:
        raise InvalidArchiveError("the upload is empty; send a zip or tar.gz archive of the adapter folder")

    members = _Members(max_bytes=max_bytes, files={}, folders=set())
    if data.startswith(_ZIP_MAGICS):
        _read_zip(data, members)
    elif data.startswith(_GZIP_MAGIC):
        _read_tar(_gunzip(data, max_bytes=max_bytes + TAR_OVERHEAD_BYTES), members)
    elif data[257:262] == b"ustar":
        _read_tar(data, members)
    else:
        raise InvalidArchiveError(
            "the upload is not a zip, tar or tar.gz archive; zip the adapter folder that PEFT's save_pretrained wrote"
        )
    return _adapter_files(members)


def _read_zip(data: bytes, members: _Members) -> None:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError) as error:
        raise InvalidArchiveError(f"the zip archive cannot be read ({error}); create it again") from error

    with archive:
        # The central directory's sizes reject a large archive before anything is decompressed. They can lie,
        # so every read below is also capped.
        if sum(info.file_size for info in archive.infolist()) > members.max_bytes:
            raise _too_large(members.max_bytes)
        for info in archive.infolist():
            _read_zip_member(archive, info, members)


def _read_zip_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, members: _Members) -> None:
    path = _member_path(info.filename)
    file_type = stat.S_IFMT(info.external_attr >> 16)
    if file_type == stat.S_IFLNK:
        raise InvalidArchiveError(f"archive member {info.filename!r} is a symbolic link; {_LAYOUT_RULE}")
    if file_type not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise InvalidArchiveError(f"archive member {info.filename!r} is not a regular file; {_LAYOUT_RULE}")
    if info.flag_bits & 0x1:
        raise InvalidArchiveError(f"archive member {info.filename!r} is encrypted; create the zip without a password")
    if not path:
        return
    if info.is_dir():
        members.add_folder(path)
        return

    _check_weights_format(path)
    remaining = members.remaining_bytes(info.file_size)
    try:
        with archive.open(info) as member:
            content = member.read(remaining + 1)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as error:
        raise InvalidArchiveError(f"archive member {info.filename!r} cannot be read ({error})") from error
    members.add_file(path, content)


def _gunzip(data: bytes, *, max_bytes: int) -> bytes:
    """Decompresses all gzip members of ``data``, stopping as soon as the output would exceed ``max_bytes``."""
    output = bytearray()
    remaining = data
    while remaining:
        decompressor = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            output += decompressor.decompress(remaining, max_bytes + 1 - len(output))
        except zlib.error as error:
            raise InvalidArchiveError(f"the gzip stream cannot be decompressed ({error}); create it again") from error
        if len(output) > max_bytes:
            raise _too_large(max_bytes)
        if not decompressor.eof:
            raise InvalidArchiveError("the gzip stream is truncated; upload the whole file")

        remaining = decompressor.unused_data
        if not remaining.startswith(_GZIP_MAGIC):
            # gzip tools ignore zero padding after the last member, and so does this reader.
            if remaining.strip(b"\x00"):
                raise InvalidArchiveError("the gzip stream is followed by data that is not gzip; create it again")
            break
    return bytes(output)


def _read_tar(data: bytes, members: _Members) -> None:
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
            for info in archive:
                _read_tar_member(archive, info, members)
    except tarfile.TarError as error:
        raise InvalidArchiveError(f"the tar archive cannot be read ({error}); create it again") from error


def _read_tar_member(archive: tarfile.TarFile, info: tarfile.TarInfo, members: _Members) -> None:
    path = _member_path(info.name)
    if info.issym() or info.islnk():
        raise InvalidArchiveError(f"archive member {info.name!r} is a link; {_LAYOUT_RULE}")
    if info.isdir():
        if path:
            members.add_folder(path)
        return
    if not info.isreg() or info.issparse():
        raise InvalidArchiveError(f"archive member {info.name!r} is not a regular file; {_LAYOUT_RULE}")
    if not path:
        raise InvalidArchiveError(f"archive member {info.name!r} has no file name; {_LAYOUT_RULE}")

    _check_weights_format(path)
    members.remaining_bytes(info.size)
    member = archive.extractfile(info)
    if member is None:
        raise InvalidArchiveError(f"archive member {info.name!r} cannot be read; {_LAYOUT_RULE}")
    with member:
        members.add_file(path, member.read())


def _member_path(name: str) -> tuple[str, ...]:
    """Splits a member name into path components without ``.`` and empty ones. Rejects absolute paths and ``..``."""
    if name.startswith(("/", "\\")) or _WINDOWS_DRIVE.match(name):
        raise InvalidArchiveError(f"archive member {name!r} has an absolute path; {_LAYOUT_RULE}")
    parts = name.replace("\\", "/").split("/")
    if ".." in parts:
        raise InvalidArchiveError(f"archive member {name!r} points outside the archive ('..'); {_LAYOUT_RULE}")
    return tuple(part for part in parts if part not in ("", "."))


def _check_weights_format(path: tuple[str, ...]) -> None:
    if path[-1].lower().endswith(PICKLE_SUFFIXES):
        raise UnsupportedWeightsFormatError(
            f"archive member {'/'.join(path)!r} contains pickle-based weights, which can run code when loaded; only "
            f"safetensors is accepted: save the adapter with save_pretrained(..., safe_serialization=True) and "
            f"upload {CONFIG_NAME} with {WEIGHTS_NAME}"
        )


def _adapter_files(members: _Members) -> AdapterFiles:
    """Checks that the members are exactly the two adapter files, at the root or in one top-level folder."""
    folder = _top_folder(members)
    for path in members.folders:
        if path != folder:
            raise InvalidArchiveError(f"the archive contains the unexpected folder {'/'.join(path)!r}; {_LAYOUT_RULE}")

    by_name: dict[str, bytes] = {}
    for path, content in members.files.items():
        if path[:-1] != folder or path[-1] not in REQUIRED_FILES:
            raise InvalidArchiveError(f"the archive contains the unexpected file {'/'.join(path)!r}; {_LAYOUT_RULE}")
        by_name[path[-1]] = content

    missing = [name for name in REQUIRED_FILES if name not in by_name]
    if missing:
        raise InvalidArchiveError(f"the archive has no {' and no '.join(missing)}; {_LAYOUT_RULE}")
    return AdapterFiles(config=by_name[CONFIG_NAME], weights=by_name[WEIGHTS_NAME])


def _top_folder(members: _Members) -> tuple[str, ...]:
    """Returns the one folder that contains the files, or ``()`` when they are at the archive's root."""
    if any(len(path) == 1 for path in members.files):
        return ()
    tops = {path[0] for path in members.files} | {path[0] for path in members.folders}
    return (tops.pop(),) if len(tops) == 1 else ()


def _too_large(max_bytes: int) -> ArchiveTooLargeError:
    return ArchiveTooLargeError(
        f"the adapter archive is larger than the limit of {max_bytes} bytes uncompressed; upload a smaller adapter "
        "(a lower LoRA rank or fewer target modules) or raise max_adapter_import_bytes"
    )
