//! Kernel names, read from CUDA sources and PTX without compiling anything.

/// The `extern "C" __global__` functions a CUDA source defines or declares, in order of
/// appearance, without duplicates. These are the unmangled names the host looks kernels up
/// by (kernels/ABI.md). The parse is lexical: comments, string literals and preprocessor
/// lines are skipped; `extern "C" { … }` blocks and attributes such as
/// `__launch_bounds__(256)` between `__global__` and the name are understood. Kernels that
/// a macro expands to are not seen.
pub fn kernel_names(source: &str) -> Vec<String> {
    let tokens = tokenize(source);
    let mut names: Vec<String> = Vec::new();
    // Brace depths at which an `extern "C" {` block was opened.
    let mut extern_blocks: Vec<usize> = Vec::new();
    let mut depth = 0usize;
    // `extern "C"` seen, applying to the declaration that follows.
    let mut extern_decl = false;
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i] {
            Token::Punct('{') => {
                depth += 1;
                extern_decl = false;
            }
            Token::Punct('}') => {
                if extern_blocks.last() == Some(&depth) {
                    extern_blocks.pop();
                }
                depth = depth.saturating_sub(1);
            }
            Token::Punct(';') => extern_decl = false,
            Token::Ident(id) if id == "extern" => {
                if matches!(tokens.get(i + 1), Some(Token::Str(s)) if s == "C") {
                    if matches!(tokens.get(i + 2), Some(Token::Punct('{'))) {
                        depth += 1;
                        extern_blocks.push(depth);
                        i += 3;
                        continue;
                    }
                    extern_decl = true;
                    i += 2;
                    continue;
                }
            }
            Token::Ident(id)
                if id == "__global__" && (extern_decl || !extern_blocks.is_empty()) =>
            {
                if let Some(name) = declared_name(&tokens[i + 1..])
                    && !names.contains(&name)
                {
                    names.push(name);
                }
            }
            _ => {}
        }
        i += 1;
    }
    names
}

/// The declared name in `void __launch_bounds__(256) name(`: the last identifier before the
/// first `(` that does not open an attribute's arguments.
fn declared_name(tokens: &[Token]) -> Option<String> {
    let mut last: Option<&str> = None;
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i] {
            Token::Ident(id)
                if matches!(
                    id.as_str(),
                    "__launch_bounds__" | "__attribute__" | "__declspec" | "__maxnreg__"
                ) =>
            {
                i = skip_parens(tokens, i + 1);
                continue;
            }
            Token::Ident(id) => last = Some(id),
            Token::Punct('(') => return last.map(str::to_string),
            Token::Punct('{' | '}' | ';') => return None,
            _ => {}
        }
        i += 1;
    }
    None
}

/// The index after the balanced parentheses starting at `tokens[i]` (or `i` when none).
fn skip_parens(tokens: &[Token], mut i: usize) -> usize {
    if !matches!(tokens.get(i), Some(Token::Punct('('))) {
        return i;
    }
    let mut depth = 0usize;
    while i < tokens.len() {
        match tokens[i] {
            Token::Punct('(') => depth += 1,
            Token::Punct(')') => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    i
}

#[derive(Debug, PartialEq)]
enum Token {
    Ident(String),
    Str(String),
    Punct(char),
}

/// Identifiers, string literals and single punctuation characters; comments, character
/// literals, numbers and preprocessor lines dropped.
fn tokenize(source: &str) -> Vec<Token> {
    let chars: Vec<char> = source.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    let mut line_start = true;
    while i < chars.len() {
        let c = chars[i];
        if c == '\n' {
            line_start = true;
            i += 1;
            continue;
        }
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if c == '#' && line_start {
            // A directive runs to the end of the line, continued by backslashes.
            while i < chars.len() && chars[i] != '\n' {
                if chars[i] == '\\' && chars.get(i + 1) == Some(&'\n') {
                    i += 1;
                }
                i += 1;
            }
            continue;
        }
        line_start = false;
        if c == '/' && chars.get(i + 1) == Some(&'/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
            continue;
        }
        if c == '/' && chars.get(i + 1) == Some(&'*') {
            i += 2;
            while i < chars.len() && !(chars[i] == '*' && chars.get(i + 1) == Some(&'/')) {
                i += 1;
            }
            i += 2;
            continue;
        }
        if c == '"' || c == '\'' {
            let mut text = String::new();
            i += 1;
            while i < chars.len() && chars[i] != c {
                if chars[i] == '\\' {
                    i += 1;
                }
                if let Some(&ch) = chars.get(i) {
                    text.push(ch);
                }
                i += 1;
            }
            i += 1;
            if c == '"' {
                tokens.push(Token::Str(text));
            }
            continue;
        }
        if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            tokens.push(Token::Ident(chars[start..i].iter().collect()));
            continue;
        }
        if c.is_ascii_digit() {
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            continue;
        }
        tokens.push(Token::Punct(c));
        i += 1;
    }
    tokens
}

/// The entry points (`.entry NAME`) a PTX text defines, in order.
pub fn ptx_entries(ptx: &str) -> Vec<String> {
    ptx.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace().skip_while(|w| *w != ".entry");
            words.next()?;
            let name: String = words
                .next()?
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '$')
                .collect();
            (!name.is_empty()).then_some(name)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_extern_c_kernel_names() {
        let src = r#"
#include "common.cuh"
#define KERNEL(name) extern "C" __global__ void name()
// extern "C" __global__ void in_a_comment(int n) {}
/* extern "C" __global__ void in_a_block_comment() {} */
__device__ float helper(float x) { return x; }
__global__ void mangled(int n) {}
extern "C" __global__ void __launch_bounds__(256) fill_f32(float* x, int len, float v) {
    const char* s = "extern \"C\" __global__ void in_a_string()";
    if (len > 0) { x[0] = v; }
}
extern "C" __global__ __launch_bounds__(128, 2) void gemm_bf16(const unsigned short* a) {}
extern "C" {
    __global__ void relu_grad(float* g, const float* a, int len) { }
    __device__ void not_a_kernel() {}
    __global__ void col_sum(const float* x, int rows, int cols, float* out);
}
template <int N> __global__ void templated() {}
extern "C" __global__ void fill_f32(float* x, int len, float v);
"#;
        assert_eq!(
            kernel_names(src),
            vec!["fill_f32", "gemm_bf16", "relu_grad", "col_sum"]
        );
    }

    #[test]
    fn finds_ptx_entries() {
        let ptx = "\
.version 8.8
.target sm_90
	// .globl	tiled
.visible .entry tiled(
	.param .u64 tiled_param_0
)
.entry local_one (
.func helper(";
        assert_eq!(ptx_entries(ptx), vec!["tiled", "local_one"]);
    }
}
