import os
import sys

from ltrec.cli import main

if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
    # A torchrun worker: end with os._exit once the command has returned its code. Letting the interpreter
    # shut down normally after gloo's teardown aborted a worker in rare CI runs ("terminate called without an
    # active exception", SIGABRT: a C++ thread destroyed while still joinable) after the work was done.
    # Every file is already written atomically and closed by now; only the streams need flushing.
    try:
        main()
        code = 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
else:
    main()
