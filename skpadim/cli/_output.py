"""Output files that are complete or absent, never half-written.

Every file is written through :mod:`skpadim._atomic` (a hidden temporary
name next to the final one, renamed at the end; an error or an interrupt
leaves any earlier file of that name as it was). The files of ``skpadim
predict`` that grow a line per image, the CSV and the JSON lines of
``--regions``, keep what was done: on an error or an interrupt their
complete lines are renamed to ``NAME.partial`` instead, a name no tool takes
for the finished result.
"""

import contextlib
import csv
import io
import json
import os
import sys

PARTIAL_SUFFIX = ".partial"


from .._atomic import sync_directory, temporary, write_bytes, write_text  # noqa: F401


class LineOutput:
    """The lines of a run, one per image, to stdout or to a file that is complete or absent.

    Lines are written, and flushed, as they come. For a file, they go to a
    temporary file renamed to ``path`` by :meth:`commit`; :meth:`abort`
    (after an error or an interrupt) keeps the complete lines as
    ``path + ".partial"``, or removes everything when there are none. A
    line is counted only once written whole, and the file is cut back to
    the last whole line, so no line is ever half-written. Subclasses say
    how a row becomes a line (:meth:`line`).
    """

    def __init__(self, path):
        self.path = path
        self.rows = 0
        if path is None:
            self._file, self._tmp = sys.stdout, None
        else:
            fd, self._tmp = temporary(path)
            self._file = os.fdopen(fd, "wb")
        self._complete = 0  # bytes of whole lines written (file only)

    def line(self, row):
        """The text of ``row``, its line end included."""
        raise NotImplementedError

    def _write(self, row):
        line = self.line(row)
        if self._tmp is None:
            self._file.write(line)
            self._file.flush()
        else:
            data = line.encode("utf-8")
            self._file.write(data)
            self._complete += len(data)

    def write(self, row):
        self._write(row)
        self.rows += 1

    def flush(self):
        self._file.flush()

    def commit(self):
        """Finish: the file gets its final name."""
        if self._tmp is None:
            self._file.flush()
            return
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise
        self._tmp = None
        sync_directory(self.path)
        with contextlib.suppress(OSError):  # a leftover of an earlier interrupted run
            os.unlink(self.path + PARTIAL_SUFFIX)

    def abort(self):
        """Stop after an error or an interrupt; return the path of the partial file, or None."""
        if self._tmp is None:
            with contextlib.suppress(OSError, ValueError):
                self._file.flush()
            return None
        tmp, self._tmp = self._tmp, None
        with contextlib.suppress(OSError, ValueError):
            self._file.close()  # flushes what is buffered, perhaps part of a line
        try:
            if self.rows == 0:
                raise OSError("no rows")
            os.truncate(tmp, self._complete)  # back to the last whole line
            partial = self.path + PARTIAL_SUFFIX
            os.replace(tmp, partial)
            return partial
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            return None


class CSVOutput(LineOutput):
    """The CSV of a run: a header, then one row (a list of strings) per image."""

    def __init__(self, path, header):
        super().__init__(path)
        self._buffer = io.StringIO()
        self._writer = csv.writer(self._buffer, lineterminator="\r\n")
        self._write(header)

    def line(self, row):
        self._buffer.seek(0)
        self._buffer.truncate()
        self._writer.writerow(row)
        return self._buffer.getvalue()


class JSONLinesOutput(LineOutput):
    """JSON lines: one JSON object (a dict) per image, no header."""

    def line(self, row):
        return json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n"
