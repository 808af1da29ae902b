use super::*;

#[test]
fn scratch() {
    let texts = [
        "[prometheus]\nurll = 1\n\n[[cluster]]\nname = \"prod\"\nservce_account = \"a/b\"\ntoken_dir = \"x\"\n[cluster.credentials]\nkubeconfg = \"k\"\n\n[[cluster]]\nname = \"prod\"\nservice_account = \"a/b\"\nfile_mode = 640\nexpiration = 5\n[cluster.credentials]\nkubeconfig = \"k\"\ntoken_file = \"t\"\n",
        "a = 1\na = 2\n",
        "[cluster]\nname = \"x\"\n",
        "prometheus = 3\n[metrics]\nlisten = \"nope\"\n[limits]\nconcurrent_requests = 0\n",
        "[[cluster]]\nname = \"a\"\nservice_account = \"a/b\"\ntoken_file = \"k\"\n[cluster.credentials]\nkubeconfig = \"./k\"\n[[cluster]]\nname = \"b\"\nservice_account = \"a/b\"\ntoken_file = \"k\"\naudiences = [\"x\", 1]\n[cluster.credentials]\nself = false\n",
    ];
    for t in texts {
        match parse(t, Path::new("/etc/mcprom.toml")) {
            Ok(s) => println!("OK {s:?}"),
            Err(e) => println!("{e}\n---"),
        }
    }
    panic!();
}
