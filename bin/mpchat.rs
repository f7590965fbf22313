//! `mpchat`: the netcat-style mpchat client, and `mpchat keygen`.
//! Argument parsing, logging set-up and exit codes only; the work is in the library.

use std::io::{self, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;

use mpchat::cli::{self, Arg, Failure};
use mpchat::client::{self, Config};
use mpchat::{crypto, pins};

const USAGE: &str = "\
usage: mpchat --server HOST[:PORT] --server-key FILE --user NAME
              [--password-file FILE] [--config-dir DIR] [--interactive | --script]
       mpchat keygen [--config-dir DIR] [--bits N]
       mpchat --help | --version

At a terminal mpchat is interactive (an input line, history, short session names,
a current session for plain lines; /help lists the commands); with pipes, or with
--script, it reads commands and writes events one per line.
Commands, one per line (SID: an id, a unique prefix of one, or a session name):
  /init NAME...   /accept SID   /decline SID   /msg SID TEXT   /join SID
  /name SID [NAME] /close SID   /status [SID]  /trust NAME     /help   /quit
Events on standard output in script mode, one per line:
  init SID ok | invite SID FROM | msg SID FROM TEXT | sent SID N | closed SID
  status ... | error COMMAND REASON | key-changed NAME OLD_FP NEW_FP | trusted NAME FP
  joined SID | named SID [NAME] | help TEXT
The config directory defaults to $MPCHAT_CONFIG_DIR, $XDG_CONFIG_HOME/mpchat or
~/.config/mpchat. See mpchat(1).";

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_target(false)
        .init();
    cli::exit_status("mpchat", run())
}

fn run() -> Result<(), Failure> {
    let mut args: Vec<_> = std::env::args_os().skip(1).collect();
    if args.first().and_then(|a| a.to_str()) == Some("keygen") {
        args.remove(0);
        return keygen(args);
    }
    let usage = |e: cli::UsageError| Failure::Usage(e.0);
    let parsed = cli::parse(
        "mpchat",
        args,
        &[
            "--server",
            "--server-key",
            "--user",
            "--password-file",
            "--config-dir",
        ],
        &["--help", "--version", "--interactive", "--script"],
    )
    .map_err(usage)?;
    let (mut server, mut server_key, mut user, mut password_file, mut config_dir) =
        (None, None, None, None, None);
    let mut mode = None;
    for arg in parsed {
        match arg {
            Arg::Pos(x) => {
                return Err(Failure::Usage(format!(
                    "mpchat: unexpected argument {x:?}; see mpchat --help"
                )))
            }
            Arg::Opt(name, value) => {
                let v = value.unwrap_or_default();
                match name.as_str() {
                    "--help" => {
                        println!("{USAGE}");
                        return Ok(());
                    }
                    "--version" => {
                        println!("mpchat {}", env!("CARGO_PKG_VERSION"));
                        return Ok(());
                    }
                    "--server" => server = Some(v),
                    "--server-key" => server_key = Some(PathBuf::from(v)),
                    "--user" => user = Some(v),
                    "--password-file" => password_file = Some(PathBuf::from(v)),
                    "--interactive" | "--script" => {
                        if mode.is_some_and(|m| m != name) {
                            return Err(Failure::Usage(
                                "mpchat: --interactive and --script exclude each other; see mpchat --help".into(),
                            ));
                        }
                        mode = Some(name);
                    }
                    _ => config_dir = Some(PathBuf::from(v)),
                }
            }
        }
    }
    let missing =
        |what: &str| Failure::Usage(format!("mpchat: {what} is required; see mpchat --help"));
    let server = server.ok_or_else(|| missing("--server HOST[:PORT]"))?;
    let server_key_path = server_key.ok_or_else(|| missing("--server-key FILE"))?;
    let user = user.ok_or_else(|| missing("--user NAME"))?;
    if !mpchat::names::valid_username(&user) {
        return Err(Failure::Usage(format!(
            "mpchat: invalid user name {user:?}: use 1-32 characters of a-z 0-9 . _ -, starting with a letter or digit"
        )));
    }
    let server_key = crypto::read_public_key(&server_key_path).map_err(|e| {
        Failure::Runtime(format!(
            "cannot use the server key {}: {e}; ask the server's operator for server.pub",
            server_key_path.display()
        ))
    })?;
    if server_key.size() != crypto::SERVER_KEY_BITS / 8 {
        // A user's key.pub (3072 bits by default) is the likely mix-up.
        return Err(Failure::Runtime(format!(
            "{} holds a {}-bit RSA key, but a server key is RSA-{}: is it a user's key.pub? Pass server.pub from the server's state directory (ask its operator)",
            server_key_path.display(),
            server_key.size() * 8,
            crypto::SERVER_KEY_BITS
        )));
    }
    let interactive = match mode.as_deref() {
        Some("--interactive") => true,
        Some(_) => false,
        None => io::stdin().is_terminal() && io::stdout().is_terminal(),
    };
    let config_dir = config_dir.unwrap_or_else(pins::default_config_dir);
    let password = match password_file {
        Some(p) => client::read_password_file(&p).map_err(|e| {
            Failure::Runtime(format!(
                "{e}; give --password-file a file whose first line is the password"
            ))
        })?,
        None => {
            cli::prompt_password(&format!("Password for {user}: ")).map_err(|e| match e.kind() {
                io::ErrorKind::Interrupted => Failure::Interrupted,
                _ => Failure::Runtime(format!(
                    "cannot prompt for a password ({e}); use --password-file FILE"
                )),
            })?
        }
    };
    let config = Config {
        server: client::with_default_port(&server),
        server_key,
        user,
        config_dir,
    };
    let result = if interactive {
        client::run_interactive(config, &password)
    } else {
        let stdin = io::BufReader::new(io::stdin());
        client::run(config, &password, stdin, io::stdout())
    };
    result.map_err(|e| Failure::Runtime(e.to_string()))
}

fn keygen(args: Vec<std::ffi::OsString>) -> Result<(), Failure> {
    let p = "mpchat keygen";
    let mut config_dir = None;
    let mut bits = pins::DEFAULT_KEY_BITS;
    for arg in cli::parse(p, args, &["--config-dir", "--bits"], &["--help"])
        .map_err(|e| Failure::Usage(e.0))?
    {
        match arg {
            Arg::Opt(name, v) if name == "--config-dir" => config_dir = v.map(PathBuf::from),
            Arg::Opt(name, v) if name == "--bits" => {
                bits = cli::number(p, &name, &v.unwrap_or_default())
                    .map_err(|e| Failure::Usage(e.0))?;
                if !(crypto::MIN_USER_KEY_BITS..=crypto::MAX_USER_KEY_BITS).contains(&bits) {
                    return Err(Failure::Usage(format!(
                        "{p}: --bits must be between 2048 and 4096"
                    )));
                }
            }
            Arg::Opt(..) => {
                println!("{USAGE}");
                return Ok(());
            }
            Arg::Pos(x) => {
                return Err(Failure::Usage(format!(
                    "{p}: unexpected argument {x:?}; see mpchat --help"
                )))
            }
        }
    }
    let dir = config_dir.unwrap_or_else(pins::default_config_dir);
    let (public, path) = pins::keygen(&dir, bits).map_err(|e| match e {
        pins::PinError::Io { .. } => Failure::Runtime(format!(
            "{e}; pass --config-dir DIR with a directory you can create or write"
        )),
        e => Failure::Runtime(e.to_string()),
    })?;
    println!("wrote {} ({bits} bits)", path.display());
    println!("fingerprint {}", public.fingerprint());
    Ok(())
}
