//! The README's example runs, and is the code of `examples/readme.rs`
//! (line by line, ignoring indentation and the `fn main` around it), so
//! the README cannot drift from code that compiles.

#[path = "../examples/readme.rs"]
mod readme;

#[test]
fn the_readme_example_runs() {
    readme::main();
}

#[test]
fn the_readme_shows_the_example() {
    let readme = include_str!("../../../README.md");
    let start = readme.find("## Using the address space").expect("the README's section");
    let code = &readme[start..];
    let code = &code[code.find("```rust\n").expect("its rust block") + 8..];
    let code = &code[..code.find("```").expect("the block's end")];
    let example = include_str!("../examples/readme.rs");
    let lines = |s: &str| -> Vec<String> {
        s.lines()
            .map(|l| l.trim().to_string())
            .filter(|l| {
                !l.is_empty() && !l.starts_with("//") && !l.starts_with("#[") && l != "pub fn main() {"
            })
            .collect()
    };
    let (shown, mut compiled) = (lines(code), lines(example));
    // The example's last line closes its `main`.
    assert_eq!(compiled.pop().as_deref(), Some("}"));
    assert_eq!(shown, compiled, "README.md and examples/readme.rs differ");
}
