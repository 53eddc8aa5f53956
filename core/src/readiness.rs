//! In-memory readiness over a template's DAG, for analysis and benchmarks.
//!
//! The same counter rule the stores apply in SQL: every step keeps the number of parents not
//! yet complete; completing a step decrements its children and the ones that reach zero become
//! ready. O(children) per completion, no scans.

use crate::template::TaskTemplate;

/// Readiness of one run of a template, in memory.
#[derive(Debug, Clone)]
pub struct Readiness {
    remaining: Vec<u32>,
    children: Vec<Vec<u32>>,
    done: Vec<bool>,
    completed: usize,
}

impl Readiness {
    /// Full computation from the template's petgraph DAG: counters and the initial ready set.
    pub fn new(template: &TaskTemplate) -> (Readiness, Vec<usize>) {
        use petgraph::visit::EdgeRef;
        Self::from_edges(
            template.graph.node_count(),
            template
                .graph
                .edge_references()
                .map(|e| (e.source().index(), e.target().index())),
        )
    }

    /// Full computation from `n` nodes and (parent, child) edges.
    pub fn from_edges(
        n: usize,
        edges: impl IntoIterator<Item = (usize, usize)>,
    ) -> (Readiness, Vec<usize>) {
        let mut remaining = vec![0u32; n];
        let mut children = vec![Vec::new(); n];
        for (p, c) in edges {
            remaining[c] += 1;
            children[p].push(c as u32);
        }
        let ready = (0..n).filter(|&i| remaining[i] == 0).collect();
        (
            Readiness {
                remaining,
                children,
                done: vec![false; n],
                completed: 0,
            },
            ready,
        )
    }

    /// Marks `step` complete and appends the children that became ready to `ready`.
    /// Completing a step twice is a no-op.
    pub fn complete(&mut self, step: usize, ready: &mut Vec<usize>) {
        if std::mem::replace(&mut self.done[step], true) {
            return;
        }
        self.completed += 1;
        for &c in &self.children[step] {
            let r = &mut self.remaining[c as usize];
            *r -= 1;
            if *r == 0 {
                ready.push(c as usize);
            }
        }
    }

    pub fn remaining_parents(&self, step: usize) -> u32 {
        self.remaining[step]
    }

    pub fn is_complete(&self) -> bool {
        self.completed == self.done.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_come_from_the_template_graph() {
        let t = TaskTemplate::from_yaml(
            "name: d\nstep_templates:\n  - {name: a}\n  - {name: b, depends_on_step: a}\n  - {name: c, depends_on_steps: [a, b]}\n",
            None,
        )
        .unwrap();
        let (mut r, ready) = Readiness::new(&t);
        assert_eq!(ready, vec![0]);
        assert_eq!((r.remaining_parents(1), r.remaining_parents(2)), (1, 2));
        let mut next = Vec::new();
        r.complete(0, &mut next);
        assert_eq!(next, vec![1]);
    }

    #[test]
    fn diamond_becomes_ready_in_order() {
        let (mut r, ready) = Readiness::from_edges(4, [(0, 1), (0, 2), (1, 3), (2, 3)]);
        assert_eq!(ready, vec![0]);
        let mut next = Vec::new();
        r.complete(0, &mut next);
        assert_eq!(next, vec![1, 2]);
        next.clear();
        r.complete(1, &mut next);
        assert!(next.is_empty());
        r.complete(2, &mut next);
        assert_eq!(next, vec![3]);
        r.complete(3, &mut next);
        assert!(r.is_complete());
    }
}
