"""`ztm completion bash|zsh`: completion scripts generated from the parser, so they follow the command table.

They complete commands, subcommands at any depth (`ztm tunnel open inbound`, also after a free word such as the
endpoint of `ztm ep NAME tunnel ...`), object kinds, options, `-o table|json`, and file names after options that
take a file. No dynamic completion (endpoint names): that would call the agent on every Tab.

The scripts walk the words typed so far through a table of transitions `NODE/FREE/WORD` (FREE: how many free
positionals were typed at NODE), then offer what the node they reached offers.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from ztm.cli.args import GLOBAL_VALUE_OPTIONS, Kind, help_children


@dataclass
class Node:
    words: list[str] = field(default_factory=list)
    """Completions for the next positional: subcommands or object kinds."""
    options: list[str] = field(default_factory=list)
    children: dict[str, Node] = field(default_factory=dict)
    after: int = 0
    """How many free positionals come before `words` (1 for `ep NAME tunnel`)."""


@dataclass
class Spec:
    commands: dict[str, Node]
    global_options: list[str]
    value_options: list[str]
    file_options: list[str]
    dir_options: list[str]

    def paths(self) -> list[tuple[str, Node]]:
        """Every node with its path of subcommand words (`tunnel open inbound`), depth first."""
        out: list[tuple[str, Node]] = []

        def visit(path: str, node: Node) -> None:
            out.append((path, node))
            for name, child in sorted(node.children.items()):
                visit(f"{path} {name}", child)

        for name, node in sorted(self.commands.items()):
            visit(name, node)
        return out


def _node(parser: argparse.ArgumentParser, global_options: set[str]) -> Node:
    node = Node()
    positionals = 0
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            node.after = positionals
        elif action.option_strings:
            node.options += [o for o in action.option_strings if o.startswith("--") and o not in global_options]
        else:
            if positionals == 0 and isinstance(action.type, Kind):
                node.words = list(action.type.words)
            positionals += 1
    nested = getattr(parser, "nested", None)
    if nested:
        node.after = int(getattr(parser, "nested_after", 0))
    children = help_children(parser)
    for name, sub in children.items():
        node.children.setdefault(name, _node(sub, global_options))
    if children:
        node.words = list(children)
    return node


def _walk(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    actions = list(parser._actions)
    for sub in {id(p): p for p in help_children(parser).values()}.values():
        actions += _walk(sub)
    return actions


def build_spec(root: argparse.ArgumentParser) -> Spec:
    global_options = ["--agent", "--mesh", "--output", "--timeout", "--help"]
    commands = {name: _node(p, set(global_options)) for name, p in help_children(root).items()}
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


def _transitions(spec: Spec) -> list[str]:
    """`NODE/FREE/WORD` for every subcommand step, the root being the empty node."""
    steps = [f'"/0/{name}"' for name in sorted(spec.commands)]
    for path, node in spec.paths():
        steps += [f'"{path}/{node.after}/{name}"' for name in sorted(node.children)]
    return steps


def bash_script(root: argparse.ArgumentParser) -> str:
    spec = build_spec(root)
    cases = [
        f'        "{path}") words="{_words(node.words)}"; opts="{_words(node.options)}"; after={node.after} ;;'
        for path, node in spec.paths()
    ]
    steps = "|".join(_transitions(spec))
    return f"""# bash completion for ztm. Load it with:  source <(ztm completion bash)
# or install it:  ztm completion bash > /etc/bash_completion.d/ztm
_ztm() {{
    local cur prev word node="" free=0 words="" opts="" after=0 i
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
        case "$node/$free/$word" in
            {steps}) node="${{node:+$node }}$word"; free=0 ;;
            *) free=$((free + 1)) ;;
        esac
    done
    if [[ -z "$node" ]]; then
        if [[ "$cur" == -* ]]; then
            COMPREPLY=($(compgen -W "{_words(spec.global_options)}" -- "$cur"))
        elif [[ $free -eq 0 ]]; then
            COMPREPLY=($(compgen -W "{_words(sorted(spec.commands))}" -- "$cur"))
        fi
        return 0
    fi
    case "$node" in
{chr(10).join(cases)}
    esac
    if [[ "$cur" == -* ]]; then
        COMPREPLY=($(compgen -W "$opts {_words(spec.global_options)}" -- "$cur"))
    elif [[ $free -eq $after && -n "$words" ]]; then
        COMPREPLY=($(compgen -W "$words" -- "$cur"))
    fi
    return 0
}}
complete -F _ztm ztm
"""


def zsh_script(root: argparse.ArgumentParser) -> str:
    spec = build_spec(root)
    cases = [
        f'    ("{path}") kinds=({_words(node.words)}); opts=({_words(node.options)}); after={node.after} ;;'
        for path, node in spec.paths()
    ]
    steps = "|".join(_transitions(spec))
    return f"""#compdef ztm
# zsh completion for ztm. Load it with:  source <(ztm completion zsh)   (after compinit)
# or install it as a file named _ztm in a directory of $fpath.
_ztm() {{
  local cur=${{words[CURRENT]}} prev=${{words[CURRENT-1]}} w node="" i
  local -i free=0 after=0
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
    case "$node/$free/$w" in
      ({steps}) node="${{node:+$node }}$w"; free=0 ;;
      (*) (( free++ )) ;;
    esac
  done
  if [[ -z $node ]]; then
    if [[ $cur == -* ]]; then
      compadd -- {_words(spec.global_options)}
    elif (( free == 0 )); then
      compadd -- {_words(sorted(spec.commands))}
    fi
    return
  fi
  case $node in
{chr(10).join(cases)}
  esac
  if [[ $cur == -* ]]; then
    compadd -- $opts {_words(spec.global_options)}
  elif (( free == after && ${{#kinds}} > 0 )); then
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
