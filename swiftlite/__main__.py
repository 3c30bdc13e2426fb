from swiftlite.cli import entry

entry()
