"""The battery's lines, repeated in the terminal summary so a run shows its figures."""

import pytest

from tests.reliability import battery


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if battery.LINES:
        terminalreporter.section("reliability figures")
        for line in battery.LINES:
            terminalreporter.write_line(line)
