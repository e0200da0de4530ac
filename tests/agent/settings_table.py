"""The README's agent configuration table, written from agent/config.py's declarations.

`python -m tests.agent.settings_table` prints it; tests/agent/test_config.py checks that the
README holds exactly this table.
"""

from agent import config


def table() -> str:
    lines = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for setting in config.SETTINGS:
        names = " / ".join(f"`{name}`" for name in setting.names)
        default = setting.shown_default or setting.default
        shown = f"`{default}`" if default is not None else ""
        lines.append(f"| {names} | {shown} | {setting.help} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(table(), end="")
