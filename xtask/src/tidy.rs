//! Project rules checked as ordinary tests: every Rust file says what it is for in its first line,
//! no source file outside `tests/` is over 700 lines (one idea a file), and the crate graph
//! follows the data as ARCHITECTURE.md says.

#[cfg(test)]
mod tests {
    use std::path::Path;

    fn rust_files(dir: &Path, found: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy();
            if path.is_dir() {
                if !name.starts_with('.') && name != "target" {
                    rust_files(&path, found);
                }
            } else if name.ends_with(".rs") {
                found.push(path);
            }
        }
    }

    #[test]
    fn every_rust_file_starts_with_a_doc_line() {
        let mut files = Vec::new();
        rust_files(&crate::util::root(), &mut files);
        assert!(files.len() > 10, "found only {files:?}");
        let missing: Vec<_> = files
            .iter()
            .filter(|path| !std::fs::read_to_string(path).unwrap().starts_with("//! "))
            .collect();
        assert!(
            missing.is_empty(),
            "files without a leading `//!` line: {missing:?}"
        );
    }

    /// A source file over this many lines wants to be several (ARCHITECTURE.md, "Rooms").
    const MOST_LINES: usize = 700;

    #[test]
    fn no_source_file_outside_tests_is_over_700_lines() {
        let root = crate::util::root();
        let mut files = Vec::new();
        rust_files(&root, &mut files);
        let long: Vec<String> = files
            .iter()
            .filter(|path| {
                let relative = path.strip_prefix(&root).unwrap_or(path);
                !relative.components().any(|c| c.as_os_str() == "tests")
            })
            .filter_map(|path| {
                let lines = std::fs::read_to_string(path).unwrap().lines().count();
                (lines > MOST_LINES).then(|| format!("{} ({lines} lines)", path.display()))
            })
            .collect();
        assert!(
            long.is_empty(),
            "source files over {MOST_LINES} lines; split each by idea: {long:?}"
        );
    }

    /// The names of the packages `package` links in a normal build of it alone, as `cargo tree`
    /// resolves its features.
    fn normal_dependencies(package: &str) -> Vec<String> {
        linked(package).into_iter().map(|(name, _)| name).collect()
    }

    /// The packages `package` links, with their versions.
    fn linked(package: &str) -> Vec<(String, String)> {
        let sh = crate::util::shell().unwrap();
        let tree = crate::util::cargo(&sh)
            .args(["tree", "--offline", "-e", "normal", "--prefix", "none"])
            .args(["-p", package])
            .quiet()
            .read()
            .unwrap_or_else(|error| panic!("{error}"));
        tree.lines()
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                Some((words.next()?.to_owned(), words.next()?.to_owned()))
            })
            .collect()
    }

    #[test]
    fn the_agent_links_one_tls_stack_and_one_crypto_library() {
        let linked = linked("autoscaler-agent");
        for name in ["hyper", "rustls", "h2", "tokio-rustls", "hyper-rustls"] {
            let mut versions: Vec<&str> = linked
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
                .collect();
            versions.sort();
            versions.dedup();
            assert!(
                versions.len() <= 1,
                "the agent links {name} {versions:?}: one HTTP/TLS stack"
            );
        }
        for name in ["aws-lc-rs", "aws-lc-sys", "aws-sdk-sso", "aws-sdk-ssooidc"] {
            assert!(
                !linked.iter().any(|(n, _)| n == name),
                "the agent links {name}: one crypto library (ring), no SSO"
            );
        }
    }

    #[test]
    fn the_crate_graph_follows_the_data() {
        let forbidden = [
            (
                "autoscaler-monitor",
                ["aws-sdk-ec2", "autoscaler-controller"],
            ),
            ("autoscaler-controller", ["tonic", "autoscaler-proto"]),
            ("autoscaler-agent", ["aws-sdk-ec2", "autoscaler-controller"]),
            ("autoscaler-policy", ["tonic", "autoscaler-monitor"]),
        ];
        for (package, names) in forbidden {
            let linked = normal_dependencies(package);
            assert!(
                linked.len() > 1,
                "cargo tree -p {package} listed {linked:?}"
            );
            for name in names {
                assert!(
                    !linked.iter().any(|linked| linked == name),
                    "{package} links {name}; ARCHITECTURE.md says it must not"
                );
            }
        }
    }
}
