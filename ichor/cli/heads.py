"""List the installed task heads: name, class, the distribution that provides it, and its head_args.

Heads are plugins registered in the `ichor.heads` entry-point group by any installed
package (ICHOR's own `classification` and `regression` included). Use one in a config as

  model:
    class_path: ichor.downstream.DownstreamTask
    init_args:
      head: classification        # or a class path: my_package.heads.MyHead
      head_args: {class_weights: balanced}
"""

from __future__ import annotations

import argparse
import inspect
import sys

from ichor.downstream.plugins import HeadError, head_arguments, installed_heads


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", help="show only this head, with its documentation")


def describe(parameter: inspect.Parameter) -> str:
    """``name: type = default`` as the constructor declares it."""
    text = parameter.name
    if parameter.annotation is not inspect.Parameter.empty:
        annotation = parameter.annotation
        text += f": {annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)}"
    if parameter.default is not inspect.Parameter.empty:
        text += f" = {parameter.default!r}"
    return text


def run(args: argparse.Namespace) -> int:
    heads = installed_heads()
    if args.name is not None and args.name not in heads:
        print(
            f"ichor heads: no installed head {args.name!r} (installed: {', '.join(heads) or 'none'})", file=sys.stderr
        )
        return 1
    for name, plugin in heads.items():
        if args.name not in (None, name):
            continue
        print(f"{name}  ({plugin.value}; from {plugin.distribution or 'unknown distribution'})")
        try:
            cls = plugin.load()
        except (HeadError, ImportError, AttributeError) as error:
            print(f"    cannot load: {error}")
            continue
        print(f"    monitor: val/{cls.monitor} ({cls.mode})")
        for parameter in head_arguments(cls):
            print(f"    {describe(parameter)}")
        if args.name is not None and cls.__doc__:
            print("\n" + inspect.cleandoc(cls.__doc__))
    return 0
