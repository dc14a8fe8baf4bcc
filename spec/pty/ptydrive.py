#!/usr/bin/env python3
"""ptydrive.py — runs a program on a pseudo-terminal, types into it and reports what appears.

The REPL specs (spec/repl_spec.lua) use it to drive the real `baton` executable the way a
person at a terminal would: keystrokes (Ctrl-C, Ctrl-D and Tab included) go through the
terminal's line discipline, so Ctrl-C raises SIGINT as it does for a user.

    ptydrive.py [--cols N] [--rows N] [--env NAME=VALUE]... [--unset NAME]... [--limit SECONDS]
                -- program args...

The steps come on stdin as a JSON array; each is an object with one action:
    {"send": "text"}                  write the bytes (UTF-8) to the terminal
    {"expect": "regex", "timeout": s} wait until the regex (Python syntax) matches the output
                                      printed since the previous match (escape sequences
                                      removed); default timeout 10 s
    {"sleep": ms}                     wait, reading output meanwhile
    {"wait": s}                       wait up to s seconds for the program to exit
A failed expect or wait ends the run. The report, on stdout as JSON:
    {"ok": bool, "error": text or null, "exit": status or null, "signal": number or null,
     "steps": [{"t": ms since the start when the step completed, "match": text,
                "screen": [rows]}...],
     "output": all output without escape sequences, "raw": all output as it came,
     "screen": [rows at the end]}
"screen" is what a terminal of cols x rows would show: a small VT100 emulator interprets
the cursor movements and erasures readline uses; rows are right-trimmed, trailing empty
rows dropped, and "cursor" gives [row, col] (0-based) of the cursor.

Never hangs: every read has a timeout, the whole run has a limit (--limit, default 120 s),
and the program's process group is killed at the end if it is still there.
"""
import fcntl
import json
import os
import re
import select
import signal
import struct
import sys
import termios
import time


class Screen:
    """A minimal VT100/xterm screen: enough for readline's redisplay."""

    def __init__(self, rows, cols):
        self.rows, self.cols = rows, cols
        self.grid = [[" "] * cols for _ in range(rows)]
        self.r = self.c = 0
        self.wrap_pending = False
        self.state = "text"
        self.seq = ""

    def _scroll(self):
        self.grid.pop(0)
        self.grid.append([" "] * self.cols)

    def _newline(self):
        if self.r == self.rows - 1:
            self._scroll()
        else:
            self.r += 1

    def _put(self, ch):
        if self.wrap_pending:
            self.c = 0
            self._newline()
            self.wrap_pending = False
        self.grid[self.r][self.c] = ch
        if self.c == self.cols - 1:
            self.wrap_pending = True
        else:
            self.c += 1

    def _csi(self, params, final):
        private = params.startswith("?")
        if private:
            return  # modes (bracketed paste, keypad): no effect on what is shown
        nums = [int(p) if p.isdigit() else 0 for p in params.split(";")] if params else []
        n = nums[0] if nums and nums[0] > 0 else 1
        self.wrap_pending = False
        row = self.grid[self.r]
        if final == "A":
            self.r = max(0, self.r - n)
        elif final == "B":
            self.r = min(self.rows - 1, self.r + n)
        elif final == "C":
            self.c = min(self.cols - 1, self.c + n)
        elif final == "D":
            self.c = max(0, self.c - n)
        elif final == "G":
            self.c = min(self.cols - 1, n - 1)
        elif final in "Hf":
            r = nums[0] if len(nums) > 0 and nums[0] > 0 else 1
            c = nums[1] if len(nums) > 1 and nums[1] > 0 else 1
            self.r, self.c = min(self.rows, r) - 1, min(self.cols, c) - 1
        elif final == "K":
            mode = nums[0] if nums else 0
            if mode == 0:
                row[self.c:] = [" "] * (self.cols - self.c)
            elif mode == 1:
                row[: self.c + 1] = [" "] * (self.c + 1)
            else:
                row[:] = [" "] * self.cols
        elif final == "J":
            mode = nums[0] if nums else 0
            if mode == 0:
                row[self.c:] = [" "] * (self.cols - self.c)
                for i in range(self.r + 1, self.rows):
                    self.grid[i] = [" "] * self.cols
            elif mode == 1:
                for i in range(0, self.r):
                    self.grid[i] = [" "] * self.cols
                row[: self.c + 1] = [" "] * (self.c + 1)
            else:
                self.grid = [[" "] * self.cols for _ in range(self.rows)]
        elif final == "P":
            del row[self.c : self.c + n]
            row.extend([" "] * (self.cols - len(row)))
        elif final == "@":
            for _ in range(n):
                row.insert(self.c, " ")
            del row[self.cols :]
        elif final == "X":
            for i in range(self.c, min(self.cols, self.c + n)):
                row[i] = " "
        # anything else (colours, ...) changes nothing we look at

    def feed(self, text):
        for ch in text:
            if self.state == "esc":
                if ch == "[":
                    self.state, self.seq = "csi", ""
                elif ch == "]":
                    self.state = "osc"
                elif ch == "M":
                    self.r = max(0, self.r - 1)
                    self.state = "text"
                else:
                    self.state = "text"  # ESC =, ESC >, ESC 7, ... : nothing shown
            elif self.state == "csi":
                if "\x40" <= ch <= "\x7e":
                    self._csi(self.seq, ch)
                    self.state = "text"
                else:
                    self.seq += ch
            elif self.state == "osc":
                if ch == "\x07":
                    self.state = "text"
                elif ch == "\x1b":
                    self.state = "osc_esc"
            elif self.state == "osc_esc":
                self.state = "text"
            elif ch == "\x1b":
                self.state = "esc"
            elif ch == "\r":
                self.c = 0
                self.wrap_pending = False
            elif ch == "\n":
                self._newline()
                self.wrap_pending = False
            elif ch == "\b":
                self.c = max(0, self.c - 1)
                self.wrap_pending = False
            elif ch == "\t":
                self.c = min(self.cols - 1, (self.c // 8 + 1) * 8)
            elif ch < " " or ch == "\x7f":
                pass
            else:
                self._put(ch)

    def snapshot(self):
        rows = ["".join(r).rstrip() for r in self.grid]
        while rows and rows[-1] == "":
            rows.pop()
        return rows


ESCAPES = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)?|[@-Z\\-_=>78])")


def plain(text):
    """The output as a log: escape sequences and carriage returns removed."""
    text = ESCAPES.sub("", text)
    return re.sub(r"[\r\x07]", "", text)


class Session:
    def __init__(self, argv, env, rows, cols, limit):
        self.start = time.monotonic()
        self.deadline = self.start + limit
        self.screen = Screen(rows, cols)
        self.raw = ""
        self.log = ""   # plain output
        self.pos = 0    # where the next expect starts searching in self.log
        self.status = None
        self.decoder = __import__("codecs").getincrementaldecoder("utf-8")("replace")
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        pid = os.fork()
        if pid == 0:  # the child: a session of its own with the terminal as controlling tty
            try:
                os.setsid()
                fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
                for fd in (0, 1, 2):
                    os.dup2(slave, fd)
                os.close(master)
                if slave > 2:
                    os.close(slave)
                os.execvpe(argv[0], argv, env)
            except BaseException as e:  # noqa: BLE001 — report and never return to Python
                os.write(2, ("ptydrive: exec failed: %s\n" % e).encode())
            os._exit(127)
        os.close(slave)
        self.pid, self.fd = pid, master
        self.eof = False

    def elapsed_ms(self):
        return round((time.monotonic() - self.start) * 1000, 1)

    def _reap(self):
        if self.status is None:
            pid, st = os.waitpid(self.pid, os.WNOHANG)
            if pid == self.pid:
                self.status = st
        return self.status is not None

    def pump(self, timeout):
        """Reads what the program printed within `timeout` seconds (at least one poll)."""
        timeout = max(0.0, min(timeout, self.deadline - time.monotonic()))
        if self.eof:
            time.sleep(min(timeout, 0.02))
            return
        r, _, _ = select.select([self.fd], [], [], timeout)
        if not r:
            return
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # EIO: the program and its children closed the terminal
            data = b""
        if not data:
            self.eof = True
            return
        text = self.decoder.decode(data)
        self.raw += text
        self.log += plain(text)
        self.screen.feed(text)

    def send(self, text):
        data = text.encode("utf-8")
        while data:
            _, w, _ = select.select([], [self.fd], [], 5)
            if not w:
                raise RuntimeError("the terminal does not accept input")
            n = os.write(self.fd, data)
            data = data[n:]

    def expect(self, pattern, timeout):
        rx = re.compile(pattern)
        end = min(time.monotonic() + timeout, self.deadline)
        while True:
            m = rx.search(self.log, self.pos)
            if m:
                self.pos = m.end()
                return m.group(0)
            if time.monotonic() >= end:
                raise RuntimeError("timed out after %.1f s waiting for %r; output since the "
                                   "last match: %r" % (timeout, pattern, self.log[self.pos:]))
            if self.eof and self._reap():
                raise RuntimeError("the program exited while waiting for %r; output since "
                                   "the last match: %r" % (pattern, self.log[self.pos:]))
            self.pump(min(0.05, max(0.0, end - time.monotonic())))

    def sleep(self, ms):
        end = time.monotonic() + ms / 1000.0
        while time.monotonic() < end:
            self.pump(min(0.02, max(0.0, end - time.monotonic())))

    def wait(self, timeout):
        end = min(time.monotonic() + timeout, self.deadline)
        while not self._reap():
            if time.monotonic() >= end:
                raise RuntimeError("the program did not exit within %.1f s" % timeout)
            self.pump(0.02)
        while not self.eof:  # what it printed last
            before = len(self.raw)
            self.pump(0.05)
            if len(self.raw) == before:
                break

    def kill(self):
        if not self._reap():
            for sig in (signal.SIGHUP, signal.SIGKILL):
                try:
                    os.killpg(self.pid, sig)
                except OSError:
                    pass
                t = time.monotonic() + 2
                while time.monotonic() < t and not self._reap():
                    time.sleep(0.01)
                if self.status is not None:
                    break
        os.close(self.fd)


def main():
    args = sys.argv[1:]
    rows, cols, limit = 40, 160, 120.0
    env = dict(os.environ)
    while args and args[0] != "--":
        opt = args.pop(0)
        if opt == "--rows":
            rows = int(args.pop(0))
        elif opt == "--cols":
            cols = int(args.pop(0))
        elif opt == "--limit":
            limit = float(args.pop(0))
        elif opt == "--env":
            name, _, value = args.pop(0).partition("=")
            env[name] = value
        elif opt == "--unset":
            env.pop(args.pop(0), None)
        else:
            sys.exit("ptydrive: unknown option " + opt)
    if not args or len(args) < 2:
        sys.exit("usage: ptydrive.py [options] -- program args...")
    argv = args[1:]
    steps = json.load(sys.stdin)

    s = Session(argv, env, rows, cols, limit)
    report = {"ok": True, "error": None, "exit": None, "signal": None, "steps": []}
    try:
        for i, step in enumerate(steps):
            done = {}
            if "send" in step:
                s.send(step["send"])
            elif "expect" in step:
                done["match"] = s.expect(step["expect"], float(step.get("timeout", 10)))
            elif "sleep" in step:
                s.sleep(float(step["sleep"]))
            elif "wait" in step:
                s.wait(float(step["wait"]))
            else:
                raise RuntimeError("step %d: unknown action %r" % (i + 1, step))
            s.pump(0)
            done["t"] = s.elapsed_ms()
            done["screen"] = s.screen.snapshot()
            done["cursor"] = [s.screen.r, s.screen.c]
            report["steps"].append(done)
    except Exception as e:  # noqa: BLE001 — every failure goes into the report
        report["ok"] = False
        report["error"] = "step %d: %s" % (len(report["steps"]) + 1, e)
    finally:
        s.kill()
    if s.status is not None:
        if os.WIFEXITED(s.status):
            report["exit"] = os.WEXITSTATUS(s.status)
        elif os.WIFSIGNALED(s.status):
            report["signal"] = os.WTERMSIG(s.status)
    report["output"] = s.log
    report["raw"] = s.raw
    report["screen"] = s.screen.snapshot()
    json.dump(report, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
