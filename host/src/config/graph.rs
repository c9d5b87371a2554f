//! The stream graph: every stream is produced by exactly one source or stage,
//! every input names a stream, and there is no cycle.

use std::collections::HashMap;

use super::SpecError;

/// A node of the graph: a stream name, the streams it reads, and the byte
/// offset of its definition (for errors).
pub(super) struct Node<'a> {
    pub name: &'a str,
    pub inputs: Vec<(&'a str, usize)>,
    pub offset: usize,
}

/// Orders `stages` so that every stage comes after the stages it reads.
/// `sources` are the stream names sources produce. Returns the indices of
/// `stages` in a valid execution order.
pub(super) fn topological_order(
    sources: &[(&str, usize)],
    stages: &[Node<'_>],
) -> Result<Vec<usize>, SpecError> {
    let mut producers: HashMap<&str, Option<usize>> = HashMap::new();
    for &(name, offset) in sources {
        if producers.insert(name, None).is_some() {
            return Err((offset, format!("two sources are named `{name}`")));
        }
    }
    for (index, stage) in stages.iter().enumerate() {
        if producers.insert(stage.name, Some(index)).is_some() {
            return Err((
                stage.offset,
                format!(
                    "the stream `{}` is defined twice: stream names (sources and stages) must be unique",
                    stage.name
                ),
            ));
        }
    }
    for stage in stages {
        for &(input, offset) in &stage.inputs {
            if !producers.contains_key(input) {
                let mut known: Vec<&str> = producers.keys().copied().collect();
                known.sort_unstable();
                return Err((
                    offset,
                    format!(
                        "stage `{}` reads the unknown stream `{input}` (known streams: {})",
                        stage.name,
                        known.join(", ")
                    ),
                ));
            }
        }
    }

    // Depth-first search with colours; a grey node reached again closes a cycle.
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        White,
        Grey,
        Black,
    }
    let mut marks = vec![Mark::White; stages.len()];
    let mut order = Vec::with_capacity(stages.len());
    fn visit(
        index: usize,
        stages: &[Node<'_>],
        producers: &HashMap<&str, Option<usize>>,
        marks: &mut [Mark],
        path: &mut Vec<usize>,
        order: &mut Vec<usize>,
    ) -> Result<(), SpecError> {
        match marks[index] {
            Mark::Black => return Ok(()),
            Mark::Grey => {
                let start = path.iter().position(|&i| i == index).unwrap_or(0);
                let mut names: Vec<&str> = path[start..].iter().map(|&i| stages[i].name).collect();
                names.push(stages[index].name);
                return Err((
                    stages[index].offset,
                    format!("the stream graph has a cycle: {}", names.join(" → ")),
                ));
            }
            Mark::White => {}
        }
        marks[index] = Mark::Grey;
        path.push(index);
        for &(input, _) in &stages[index].inputs {
            if let Some(Some(producer)) = producers.get(input) {
                visit(*producer, stages, producers, marks, path, order)?;
            }
        }
        path.pop();
        marks[index] = Mark::Black;
        order.push(index);
        Ok(())
    }
    let mut path = Vec::new();
    for index in 0..stages.len() {
        visit(index, stages, &producers, &mut marks, &mut path, &mut order)?;
    }
    Ok(order)
}
