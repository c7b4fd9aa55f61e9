//! `setpoint status`: the daemon's services, jobs and devices at a glance; with `--watch`,
//! again at every refresh.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::output::{client_error, connect, print_answer, print_json};
use crate::cli::StatusArgs;
use crate::client::watch::{self, WatchHistory};
use crate::client::{Client, table};
use crate::node::StatusView;

const PATH: &str = "/v1/status";

/// Runs `setpoint status`.
pub fn run(args: StatusArgs) -> anyhow::Result<()> {
    let client = connect(&args.client)?;
    if args.watch {
        return run_watch(&client, &args);
    }
    let v = client.get(PATH).map_err(client_error)?;
    print_answer(
        &client,
        "GET",
        PATH,
        v,
        args.client.json,
        |s: &StatusView| table::status_text(s),
    )
}

/// Set by Ctrl-C while watching: the loop ends after the frame it is on.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Where frames go: a terminal is redrawn in place with the cursor hidden, anything else
/// gets the frames one after another, a blank line between them.
struct Screen {
    terminal: bool,
    frames: u64,
}

impl Screen {
    fn begin(terminal: bool) -> Screen {
        if terminal {
            print!("\x1b[?25l");
        }
        Screen {
            terminal,
            frames: 0,
        }
    }

    fn draw(&mut self, text: &str) -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        if self.terminal {
            out.write_all(b"\x1b[H\x1b[2J")?;
        } else if self.frames > 0 {
            out.write_all(b"\n")?;
        }
        out.write_all(text.as_bytes())?;
        self.frames += 1;
        out.flush()
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        if self.terminal {
            print!("\x1b[?25h");
            let _ = std::io::stdout().flush();
        }
    }
}

/// `setpoint status --watch`: a frame (or, with `--json`, a status line) every
/// `--interval` seconds until Ctrl-C or `--count` refreshes. The first refresh's error
/// ends the command; later ones are shown and tried again.
fn run_watch(client: &Client, args: &StatusArgs) -> anyhow::Result<()> {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t);
    }
    let json = args.client.json;
    let mut screen = Screen::begin(!json && std::io::stdout().is_terminal());
    let mut history = WatchHistory::new();
    let interval = Duration::from_secs_f64(args.interval);
    let start = Instant::now();
    let mut refresh: u64 = 0;
    while !STOP.load(Ordering::SeqCst) {
        match client.get(PATH) {
            Ok(v) if json => print_json(&v)?,
            Ok(v) => match client.read_answer::<StatusView>("GET", PATH, v) {
                Ok(s) => history.record(s),
                Err(e) if refresh == 0 => return Err(client_error(e)),
                Err(e) => history.record_error(e.to_string()),
            },
            Err(e) if refresh == 0 => return Err(client_error(e)),
            Err(e) if json => eprintln!("setpoint: {e} (retrying)"),
            Err(e) => history.record_error(e.to_string()),
        }
        if !json {
            screen.draw(&watch::frame(&history, watch::DEFAULT_WIDTH))?;
        }
        refresh += 1;
        if args.count.is_some_and(|n| refresh >= n) {
            break;
        }
        sleep_until(start + interval.mul_f64(refresh as f64));
    }
    Ok(())
}

/// Sleeps until `at`, waking early when Ctrl-C is pressed.
fn sleep_until(at: Instant) {
    loop {
        let now = Instant::now();
        if now >= at || STOP.load(Ordering::SeqCst) {
            return;
        }
        std::thread::sleep((at - now).min(Duration::from_millis(50)));
    }
}
