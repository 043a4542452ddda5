//! The Debian package (scripts/deb) built from a binary built already: its
//! files, unpacked with `dpkg -x` into a scratch root; its systemd units
//! checked by `systemd-analyze verify` (which also finds their man pages) and
//! `systemd-analyze security` (the sandbox holds); the installed binary runs.
//! The binary packaged is $IOTPKI_DEB_BINARY (scripts/test: the release
//! build) or, without it, this test build's.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::run_ok;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn analyze(args: &[&str], man: &Path) -> (bool, String) {
    let out = Command::new("systemd-analyze").args(args).env("MANPATH", man).output().expect("systemd-analyze");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn debian_package_holds_binary_units_completions_and_man_pages_and_its_units_verify() {
    let bin = std::env::var_os("IOTPKI_DEB_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_iotpki")));
    eprintln!("packaging {}", bin.display());
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("deb");
    let printed = run_ok(
        Command::new(repo().join("scripts/deb"))
            .arg("--binary")
            .arg(&bin)
            .arg("--out")
            .arg(&out)
            .env("TMPDIR", tmp.path()),
    );
    let deb = PathBuf::from(printed.trim());
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        deb.ends_with(format!("iotpki_{version}_amd64.deb")) || deb.to_string_lossy().contains(version),
        "{}",
        deb.display()
    );

    // The control data: the user is made at install, the env files are conffiles.
    let ctrl = tmp.path().join("ctrl");
    run_ok(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&ctrl));
    let postinst = std::fs::read_to_string(ctrl.join("postinst")).unwrap();
    assert!(postinst.contains("adduser --system --group") && postinst.contains("iotpki"), "{postinst}");
    let conffiles = std::fs::read_to_string(ctrl.join("conffiles")).unwrap();
    assert_eq!(conffiles, "/etc/iotpki/serve.env\n/etc/iotpki/agent.env\n");
    let control = std::fs::read_to_string(ctrl.join("control")).unwrap();
    assert!(control.contains(&format!("Version: {version}\n")) && control.contains("libc6"), "{control}");

    let root = tmp.path().join("root");
    run_ok(Command::new("dpkg").arg("-x").arg(&deb).arg(&root));
    for f in [
        "usr/bin/iotpki",
        "lib/systemd/system/iotpki.service",
        "lib/systemd/system/iotpki-agent.service",
        "etc/iotpki/serve.env",
        "etc/iotpki/agent.env",
        "usr/share/bash-completion/completions/iotpki",
        "usr/share/zsh/vendor-completions/_iotpki",
        "usr/share/fish/vendor_completions.d/iotpki.fish",
        "usr/share/man/man1/iotpki.1.gz",
        "usr/share/man/man1/iotpki-serve.1.gz",
        "usr/share/man/man1/iotpki-agent-run.1.gz",
        "usr/share/man/man1/iotpki-cert-issue-server.1.gz",
        "usr/share/doc/iotpki/copyright",
    ] {
        let p = root.join(f);
        assert!(p.metadata().map(|m| m.len() > 0).unwrap_or(false), "{f} missing or empty in the package");
    }
    // The completions come from the clap definitions: they know every subcommand.
    let bash = root.join("usr/share/bash-completion/completions/iotpki");
    assert!(std::fs::read_to_string(&bash).unwrap().contains("issue-server"));
    run_ok(Command::new("bash").arg("-n").arg(&bash));
    assert!(std::fs::read_to_string(root.join("usr/share/fish/vendor_completions.d/iotpki.fish"))
        .unwrap()
        .contains("complete -c iotpki"));

    // The installed binary runs.
    let v = run_ok(Command::new(root.join("usr/bin/iotpki")).arg("--version"));
    assert_eq!(v.trim(), format!("iotpki {version}"));

    // The units: sandboxed as promised, and valid for systemd. verify needs the
    // ExecStart binary to exist: point it into the scratch root.
    let units = tmp.path().join("units");
    std::fs::create_dir_all(&units).unwrap();
    let man = root.join("usr/share/man");
    for (unit, exec) in [("iotpki.service", "iotpki serve"), ("iotpki-agent.service", "iotpki agent run")] {
        let text = std::fs::read_to_string(root.join("lib/systemd/system").join(unit)).unwrap();
        for d in [
            "User=iotpki\n",
            "StateDirectory=iotpki\n",
            "ConfigurationDirectory=iotpki\n",
            "ProtectSystem=strict\n",
            "ProtectHome=yes\n",
            "PrivateTmp=yes\n",
            "NoNewPrivileges=yes\n",
            "CapabilityBoundingSet=\n",
            "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX\n",
            "SystemCallFilter=@system-service\n",
            &format!("ExecStart=/usr/bin/{exec} "),
        ] {
            assert!(text.contains(d), "{unit} lacks {d:?}");
        }
        if unit == "iotpki.service" {
            assert!(text.contains("ExecReload=/bin/kill -HUP $MAINPID\n"), "{text}");
        }
        let local = text.replace("/usr/bin/iotpki", root.join("usr/bin/iotpki").to_str().unwrap());
        std::fs::write(units.join(unit), local).unwrap();
    }
    let paths: Vec<String> = ["iotpki.service", "iotpki-agent.service"]
        .iter()
        .map(|u| units.join(u).to_string_lossy().into_owned())
        .collect();
    let mut args = vec!["verify"];
    args.extend(paths.iter().map(String::as_str));
    let (ok, text) = analyze(&args, &man);
    assert!(ok && text.trim().is_empty(), "systemd-analyze verify:\n{text}");
    for p in &paths {
        // Exposure 2.0 at most ("OK"; 10 is a unit without any sandbox).
        let (ok, text) = analyze(&["security", "--offline=yes", "--threshold=20", p], &man);
        assert!(ok, "systemd-analyze security {p}:\n{text}");
    }
}
