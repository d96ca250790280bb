//! `-W/--password`: the password read from the terminal with echo off, as libpq's simple_prompt
//! reads it (from `/dev/tty`, or standard input and error when there is no terminal).
#![allow(unsafe_code)]

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;

/// Prompts with `prompt` and reads one line, not echoed when it comes from a terminal.
pub fn prompt_password(prompt: &str) -> std::io::Result<String> {
    let line = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
    {
        Ok(tty) => read_hidden(&tty, prompt)?,
        Err(_) => {
            eprint!("{prompt}");
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line)?;
            line
        }
    };
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}

fn read_hidden(tty: &File, prompt: &str) -> std::io::Result<String> {
    let fd = tty.as_raw_fd();
    // SAFETY: termios is a plain C struct of integers, for which all zeroes is a valid value.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: tcgetattr fills in `saved`; `fd` is open for the whole function (a borrowed File).
    let is_terminal = unsafe { libc::tcgetattr(fd, &mut saved) } == 0;
    if is_terminal {
        let mut quiet = saved;
        quiet.c_lflag &= !libc::ECHO;
        // SAFETY: as above; `quiet` is a valid termios derived from the terminal's own.
        unsafe { libc::tcsetattr(fd, libc::TCSAFLUSH, &quiet) };
    }
    let mut out = tty;
    let r = out
        .write_all(prompt.as_bytes())
        .and_then(|()| out.flush())
        .and_then(|()| {
            let mut line = String::new();
            BufReader::new(tty).read_line(&mut line).map(|_| line)
        });
    if is_terminal {
        // SAFETY: restores what tcgetattr returned for this descriptor.
        unsafe { libc::tcsetattr(fd, libc::TCSAFLUSH, &saved) };
        let _ = out.write_all(b"\n");
    }
    r
}
