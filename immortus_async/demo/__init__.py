"""``immortus-async demo``: a private Redis, an arq worker, the bridge and a web page.

Run it with ``immortus-async demo`` (``pip install 'immortus-async[demo]'``). Its
modules: :mod:`~immortus_async.demo.jobs` (the three example jobs),
:mod:`~immortus_async.demo.web` (the page and the endpoint that enqueues),
:mod:`~immortus_async.demo.launcher` (starts and stops everything) and
:mod:`~immortus_async.demo.cli` (the subcommand). Only the last one is imported by
the CLI itself, so ``immortus-async --help`` works without the ``demo`` extra.
"""

__all__: list[str] = []
