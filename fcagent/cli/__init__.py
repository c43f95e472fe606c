"""The `fcagent` command line: `fcagent.cli.app` holds the app; each command group is a module of its own."""


def main() -> None:
    from fcagent.cli.app import main as run

    run()
