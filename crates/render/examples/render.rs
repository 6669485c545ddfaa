//! What `cairnctl render DIR [--node NAME] [--values FILE]...` does, as a
//! standalone example: `cargo run -p cairn-render --example render -- gitops --node node1`.

use std::path::PathBuf;

use cairn_render::{render_dir, render_node, Fleet, TemplateContext};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut dir: Option<PathBuf> = None;
    let mut node: Option<String> = None;
    let mut values: Vec<PathBuf> = Vec::new();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--node" => node = args.next(),
            "--values" => values.extend(args.next().map(PathBuf::from)),
            _ => dir = Some(PathBuf::from(a)),
        }
    }
    let dir =
        dir.ok_or_else(|| anyhow::anyhow!("usage: render DIR [--node NAME] [--values FILE]..."))?;
    let rendered = match node {
        Some(name) => {
            let fleet = Fleet::load(&dir)?;
            let mut plan = fleet.plan_for(&name)?;
            for v in &values {
                plan.context.overlay_values_file(v)?;
            }
            render_node(&dir, &plan)?
        }
        None => {
            let mut ctx = TemplateContext::default();
            for v in &values {
                ctx.overlay_values_file(v)?;
            }
            render_dir(&dir, &ctx)?
        }
    };
    print!("{}", rendered.to_yaml_stream());
    Ok(())
}
