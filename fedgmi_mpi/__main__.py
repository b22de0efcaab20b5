import sys

if __name__ == "__main__":
    if sys.argv[1:2] == ["run"]:  # from the first moment: a stop signal must not kill a starting rank
        from .stop import REQUEST

        REQUEST.install()
    from .cli import main

    main()
