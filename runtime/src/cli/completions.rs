//! `sluice completions <shell>`: a completion script generated from the command line's own
//! definition, so it always knows every command and flag of this binary.

use clap::{Args, CommandFactory};
use clap_complete::Shell;

use super::exit;

/// Arguments of `sluice completions`.
#[derive(Debug, Args)]
#[command(after_help = "Install:\n  \
    bash: sluice completions bash > ~/.local/share/bash-completion/completions/sluice\n  \
    zsh:  sluice completions zsh > ~/.zfunc/_sluice   (with `fpath+=~/.zfunc` before `compinit`)\n  \
    fish: sluice completions fish > ~/.config/fish/completions/sluice.fish")]
pub struct CompletionsArgs {
    /// The shell to complete in.
    shell: Shell,
}

/// Print the script to stdout.
pub fn run(args: CompletionsArgs) -> i32 {
    let mut cli = super::Cli::command();
    let name = cli.get_name().to_string();
    clap_complete::generate(args.shell, &mut cli, name, &mut std::io::stdout());
    exit::OK
}
