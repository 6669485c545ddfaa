//! Start a throwaway control plane for manual experiments; prints the
//! admin kubeconfig path and runs until stdin closes.

fn main() -> anyhow::Result<()> {
    let cp = cairn_kubetest::ControlPlane::start()?;
    println!("KUBECONFIG={}", cp.kubeconfig.display());
    let mut s = String::new();
    while std::io::stdin().read_line(&mut s)? > 0 {}
    Ok(())
}
