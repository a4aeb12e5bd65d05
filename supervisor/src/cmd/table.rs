//! [`render`]: a plain-text table whose columns are as wide as their widest cell, for
//! the list commands (`kv list`, `executions list`). Cells are left-aligned and split by
//! two spaces; no line ends in blanks, so a long last value costs no padding.
//! Widths count characters, which is exact for the ASCII these tables mostly hold.

/// The header and rows as lines, each ending in `\n`.
pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let last = row.len().saturating_sub(1);
        for (i, cell) in row.iter().enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                let pad = widths[i] - cell.chars().count();
                out.push_str(cell);
                out.extend(std::iter::repeat_n(' ', pad + 2));
            }
        }
        // An empty last cell would leave the padding of the one before it.
        out.truncate(out.trim_end_matches(' ').len());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::render;

    #[test]
    fn columns_fit_the_widest_cell() {
        let rows = vec![
            vec!["a-rather-long-key".to_string(), "1".to_string()],
            vec!["k".to_string(), "{\"x\": 2}".to_string()],
        ];
        assert_eq!(
            render(&["key", "value"], &rows),
            "key                value\n\
             a-rather-long-key  1\n\
             k                  {\"x\": 2}\n"
        );
    }
}
