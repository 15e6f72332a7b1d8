"""`runner.volume`: the names Modal's `modal.volume` module offers."""

from ._volume import FileEntry, FileEntryType, Volume

__all__ = ["FileEntry", "FileEntryType", "Volume"]
