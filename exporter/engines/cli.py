"""PLACEHOLDER for `inferwatch-exporter normalize`."""


def normalize_main(argv: list[str]) -> int:
    return 2
