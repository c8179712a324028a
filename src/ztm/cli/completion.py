"""`ztm completion bash|zsh`: completion scripts generated from the parser, so they follow the command table.

They complete commands, subcommands and object kinds, options, `-o table|json`, and file names after options that
take a file. No dynamic completion (endpoint names): that would call the agent on every Tab.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from ztm.cli.args import GLOBAL_VALUE_OPTIONS, Kind, subcommands


@dataclass
class Node:
    words: list[str] = field(default_factory=list)
    """Completions for the first positional: subcommands or object kinds."""
    options: list[str] = field(default_factory=list)
    children: dict[str, Node] = field(default_factory=dict)


@dataclass
class Spec:
    commands: dict[str, Node]
    global_options: list[str]
    value_options: list[str]
    file_options: list[str]
    dir_options: list[str]


def _node(parser: argparse.ArgumentParser, global_options: set[str]) -> Node:
    node = Node()
    first_positional = True
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                node.children.setdefault(name, _node(sub, global_options))
            node.words = list(node.children)
        elif action.option_strings:
            node.options += [o for o in action.option_strings if o.startswith("--") and o not in global_options]
        elif first_positional:
            first_positional = False
            if isinstance(action.type, Kind):
                node.words = list(action.type.words)
    return node


def _walk(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    actions = list(parser._actions)
    for sub in subcommands(parser).values():
        actions += _walk(sub)
    return actions


def build_spec(root: argparse.ArgumentParser) -> Spec:
    global_options = ["--agent", "--mesh", "--output", "--timeout", "--help"]
    commands = {name: _node(p, set(global_options)) for name, p in subcommands(root).items()}
    if "help" in commands:
        commands["help"].words = sorted(commands)
    value: set[str] = set(GLOBAL_VALUE_OPTIONS)
    files: set[str] = set()
    dirs: set[str] = set()
    for action in _walk(root):
        if not action.option_strings or action.nargs == 0:
            continue
        value.update(action.option_strings)
        if action.metavar in ("FILE", "OUT"):
            files.update(action.option_strings)
        elif action.metavar == "DIR":
            dirs.update(action.option_strings)
    return Spec(commands, global_options, sorted(value), sorted(files), sorted(dirs))


def _words(items: list[str]) -> str:
    return " ".join(items)


def _pattern(items: list[str]) -> str:
    """A shell `case` pattern matching any of `items` (never empty)."""
    return "|".join(items) or "__ztm_no_such_option__"


def bash_script(root: argparse.ArgumentParser) -> str:
    spec = build_spec(root)
    cases: list[str] = []
    for name, node in sorted(spec.commands.items()):
        if node.children:
            subs = [
                f'                {sub}) opts="{_words(child.options)}" ;;'
                for sub, child in sorted(node.children.items())
            ]
            inner = "\n".join(subs)
            head = f'        {name})\n            words="{_words(node.words)}"\n            case "$sub" in'
            cases.append(f"{head}\n{inner}\n            esac\n            ;;")
        else:
            cases.append(f'        {name}) words="{_words(node.words)}"; opts="{_words(node.options)}" ;;')
    return f"""# bash completion for ztm. Load it with:  source <(ztm completion bash)
# or install it:  ztm completion bash > /etc/bash_completion.d/ztm
_ztm() {{
    local cur prev word cmd="" sub="" words="" opts="" i
    COMPREPLY=()
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    case "$prev" in
        --output|-o) COMPREPLY=($(compgen -W "table json" -- "$cur")); return 0 ;;
        {_pattern(spec.file_options)}) COMPREPLY=($(compgen -f -- "$cur")); return 0 ;;
        {_pattern(spec.dir_options)}) COMPREPLY=($(compgen -d -- "$cur")); return 0 ;;
        {_pattern(spec.value_options)}) return 0 ;;
    esac
    for ((i = 1; i < COMP_CWORD; i++)); do
        word="${{COMP_WORDS[i]}}"
        case "$word" in
            {_pattern(spec.value_options)}) ((i++)); continue ;;
            -*) continue ;;
        esac
        if [[ -z "$cmd" ]]; then cmd="$word"; elif [[ -z "$sub" ]]; then sub="$word"; fi
    done
    if [[ -z "$cmd" ]]; then
        if [[ "$cur" == -* ]]; then
            COMPREPLY=($(compgen -W "{_words(spec.global_options)}" -- "$cur"))
        else
            COMPREPLY=($(compgen -W "{_words(sorted(spec.commands))}" -- "$cur"))
        fi
        return 0
    fi
    case "$cmd" in
{chr(10).join(cases)}
    esac
    if [[ "$cur" == -* ]]; then
        COMPREPLY=($(compgen -W "$opts {_words(spec.global_options)}" -- "$cur"))
    elif [[ -z "$sub" && -n "$words" ]]; then
        COMPREPLY=($(compgen -W "$words" -- "$cur"))
    fi
    return 0
}}
complete -F _ztm ztm
"""


def zsh_script(root: argparse.ArgumentParser) -> str:
    spec = build_spec(root)
    cases: list[str] = []
    for name, node in sorted(spec.commands.items()):
        if node.children:
            subs = [
                f"        ({sub}) opts=({_words(child.options)}) ;;" for sub, child in sorted(node.children.items())
            ]
            inner = "\n".join(subs)
            cases.append(
                f"    ({name})\n      kinds=({_words(node.words)})\n      case $sub in\n{inner}\n      esac\n      ;;"
            )
        else:
            cases.append(f"    ({name}) kinds=({_words(node.words)}); opts=({_words(node.options)}) ;;")
    return f"""#compdef ztm
# zsh completion for ztm. Load it with:  source <(ztm completion zsh)   (after compinit)
# or install it as a file named _ztm in a directory of $fpath.
_ztm() {{
  local cur=${{words[CURRENT]}} prev=${{words[CURRENT-1]}} w cmd="" sub="" i
  local -a kinds opts
  case $prev in
    (--output|-o) compadd -- table json; return ;;
    ({_pattern(spec.file_options)}) _files; return ;;
    ({_pattern(spec.dir_options)}) _files -/; return ;;
    ({_pattern(spec.value_options)}) return ;;
  esac
  for (( i = 2; i < CURRENT; i++ )); do
    w=${{words[i]}}
    case $w in
      ({_pattern(spec.value_options)}) (( i++ )); continue ;;
      (-*) continue ;;
    esac
    if [[ -z $cmd ]]; then cmd=$w; elif [[ -z $sub ]]; then sub=$w; fi
  done
  if [[ -z $cmd ]]; then
    if [[ $cur == -* ]]; then
      compadd -- {_words(spec.global_options)}
    else
      compadd -- {_words(sorted(spec.commands))}
    fi
    return
  fi
  case $cmd in
{chr(10).join(cases)}
  esac
  if [[ $cur == -* ]]; then
    compadd -- $opts {_words(spec.global_options)}
  elif [[ -z $sub && ${{#kinds}} -gt 0 ]]; then
    compadd -- $kinds
  fi
}}
if [[ ${{zsh_eval_context[-1]}} == loadautofunc ]]; then
  _ztm "$@"
else
  compdef _ztm ztm
fi
"""


def script(shell: str, root: argparse.ArgumentParser) -> str:
    return bash_script(root) if shell == "bash" else zsh_script(root)
