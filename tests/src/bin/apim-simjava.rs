//! `apim-simjava`: the simulated JVM a fake JDK's `bin/java` points at (test support only).

fn main() {
    let argv: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    std::process::exit(apim_e2e::sim::main_entry(argv));
}
